"""One driver per run root: a lock object ``{root}/_lock.json`` naming who holds it.

Two drivers on one root do every stage twice, and each removes temp files and rewrites manifest parts
the other is using. So a run takes this lock before Ray starts and a second driver refuses at once,
naming the holder (exit 2). The object records owner, host, pid, start time and a heartbeat that a
daemon thread refreshes every ``HEARTBEAT_S``. A lock is stale, and is taken over, when its driver is
gone: on the same host its pid is dead (or was reused by a process started later); on another host
its heartbeat is older than ``STALE_AFTER_S``.

The lock works on local disks and object stores alike, through ``contracts.store``. On a local disk a
free lock is taken by an exclusive create (``O_EXCL``). Object stores have no create-if-absent, and
a stale lock is replaced, so there taking the lock is write-then-verify: write our record, wait
``SETTLE_S``, read it back; of two drivers racing, the last writer wins and the other sees a foreign
token and refuses. Each heartbeat re-checks the token, and writers that publish (the shard
stage) check ``holds(root, token)`` right before publishing, so a driver that lost the lock, or the
orphaned actors of a killed one, cannot publish after another driver took over.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from contracts import store

LOCK_NAME = "_lock.json"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 180.0  # a lock from another host whose heartbeat is older than this is taken over
SETTLE_S = 0.5

_HELD: dict[str, str] = {}  # root -> token of the locks this process holds


class RootLocked(RuntimeError):
    """Another live driver holds the run root's lock."""


def lock_uri(root: str) -> str:
    return store.join(store.normalize(root), LOCK_NAME)


def _process_start(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:
        return None


def _record(token: str) -> dict[str, Any]:
    now = time.time()
    return {
        "token": token,
        "owner": getpass.getuser(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_started_at": _process_start(os.getpid()),
        "started_at": now,
        "heartbeat_at": now,
        "command": " ".join(sys.argv)[:300],
    }


def read_lock(root: str) -> dict[str, Any] | None:
    """The lock record of ``root``, or None when no driver holds it (an unreadable record counts as none)."""
    uri = lock_uri(root)
    try:
        return store.read_json(uri) if store.exists(uri) else None
    except (OSError, ValueError):
        return None


def _create_exclusive(uri: str, record: dict[str, Any]) -> bool:
    """On a local disk, create the lock file only if absent (atomic); False when it exists."""
    _, path = store.resolve(uri)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    return True


def is_stale(record: dict[str, Any], stale_after_s: float = STALE_AFTER_S) -> bool:
    """True when the driver that wrote ``record`` is gone (see the module docstring)."""
    if record.get("host") == socket.gethostname():
        pid = int(record.get("pid") or 0)
        if pid <= 0:
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, owned by another user
        started, recorded = _process_start(pid), record.get("pid_started_at")
        return bool(started and recorded and abs(started - recorded) > 1.0)  # the pid was reused
    return time.time() - float(record.get("heartbeat_at") or 0) > stale_after_s


def describe(record: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(record.get("started_at") or 0)))
    beat = time.time() - float(record.get("heartbeat_at") or 0)
    return (
        f"{record.get('owner')} on {record.get('host')} (pid {record.get('pid')}), running since {started}, "
        f"last heartbeat {beat:.0f}s ago"
    )


def acquire(root: str, stale_after_s: float = STALE_AFTER_S, settle_s: float = SETTLE_S) -> str:
    """Take the root's lock and return its token; ``RootLocked`` when a live driver holds it."""
    uri = lock_uri(root)
    held = read_lock(root)
    if held and not is_stale(held, stale_after_s):
        raise RootLocked(
            f"run root {store.normalize(root)} is in use by another driver: {describe(held)}; "
            f"wait for it to finish or stop it (a killed driver's lock is taken over automatically)"
        )
    token = uuid.uuid4().hex
    if held is None and not store.is_remote(uri):
        if _create_exclusive(uri, _record(token)):
            _HELD[store.normalize(root)] = token
            return token
        for _ in range(20):  # another driver created it this instant: its record is being written
            if (held := read_lock(root)) is not None:
                break
            time.sleep(0.05)
        if held is None or not is_stale(held, stale_after_s):
            raise RootLocked(
                f"run root {store.normalize(root)} was taken at the same moment by another driver: "
                f"{describe(held) if held else 'unknown'}"
            )
    store.write_json(uri, _record(token))
    time.sleep(settle_s)
    now = read_lock(root)
    if not now or now.get("token") != token:
        raise RootLocked(
            f"run root {store.normalize(root)} was taken at the same moment by another driver: "
            f"{describe(now) if now else 'unknown'}"
        )
    _HELD[store.normalize(root)] = token
    return token


def holds(root: str, token: str | None) -> bool:
    """True when ``token`` still holds ``root``'s lock (a None token: no lock in use, always True)."""
    if token is None:
        return True
    now = read_lock(root)
    return bool(now) and now.get("token") == token


def held_token(root: str) -> str | None:
    """The token of the lock this process holds on ``root``, if any (passed to writers for fencing)."""
    return _HELD.get(store.normalize(root))


def release(root: str, token: str) -> None:
    """Remove the lock if it is still ours."""
    _HELD.pop(store.normalize(root), None)
    if holds(root, token):
        store.remove(lock_uri(root))


def _heartbeat(root: str, token: str, stop: threading.Event, interval_s: float) -> None:
    while not stop.wait(interval_s):
        record = read_lock(root)
        if not record or record.get("token") != token:
            _HELD.pop(store.normalize(root), None)
            print(
                f"warning: the lock on {root} was taken over by another driver; this run stops publishing",
                file=sys.stderr,
            )
            return
        record["heartbeat_at"] = time.time()
        with contextlib.suppress(OSError):
            store.write_json(lock_uri(root), record)


@contextlib.contextmanager
def root_lock(
    root: str, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S
) -> Iterator[str]:
    """Hold ``root``'s lock for the block, with a heartbeat; yields the run token."""
    token = acquire(root, stale_after_s)
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(root, token, stop, heartbeat_s), daemon=True, name="vidal-root-lock"
    )
    beat.start()
    try:
        yield token
    finally:
        stop.set()
        beat.join(timeout=5)
        release(root, token)
