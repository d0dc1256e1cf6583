"""One driver per root: a live holder makes a second driver refuse at once (exit 2, one line naming it);
the lock of a driver killed with kill -9 is taken over; a lock from another host is stale only when
its heartbeat is old; a writer whose run lost the lock publishes nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from contracts import lock, store

REPO = Path(__file__).resolve().parent.parent
HOLD = "import sys, time; from contracts.lock import root_lock\nwith root_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)"


def hold_in_subprocess(root: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_driver_refuses_at_once_naming_the_holder(tmp_path):
    root = tmp_path / "root"
    holder = hold_in_subprocess(root)
    try:
        t0 = time.time()
        r = subprocess.run(
            [
                sys.executable,
                "pipeline/run.py",
                "--config",
                "configs/demo.yaml",
                "--root",
                str(root),
                "--set",
                "run.ray_address=local",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2, r.stderr[-2000:]
        err = r.stderr.strip()
        assert len(err.splitlines()) == 1 and f"pid {holder.pid}" in err and socket.gethostname() in err, err
        assert time.time() - t0 < 60  # before Ray started: no Ray log line either
        assert "Ray" not in err and not (root / "discover").exists()
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_driver_killed_with_kill_9_is_taken_over(tmp_path):
    root = tmp_path / "root"
    holder = hold_in_subprocess(root)
    with pytest.raises(lock.RootLocked):
        lock.acquire(str(root), settle_s=0)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert lock.read_lock(str(root))["pid"] == holder.pid  # the dead driver's lock is still there
    token = lock.acquire(str(root), settle_s=0)
    record = lock.read_lock(str(root))
    assert record["pid"] == os.getpid() and record["token"] == token
    lock.release(str(root), token)
    assert lock.read_lock(str(root)) is None


def test_lock_from_another_host_is_stale_only_after_its_heartbeat_timeout(tmp_path):
    root = str(tmp_path / "root")
    record = {
        "token": "t-other",
        "owner": "someone",
        "host": "another-host.example",
        "pid": 1,
        "started_at": time.time() - 3600,
        "heartbeat_at": time.time() - 5,
    }
    store.write_json(lock.lock_uri(root), record)
    with pytest.raises(lock.RootLocked, match="another-host.example"):
        lock.acquire(root, stale_after_s=60, settle_s=0)
    store.write_json(lock.lock_uri(root), {**record, "heartbeat_at": time.time() - 120})
    token = lock.acquire(root, stale_after_s=60, settle_s=0)
    assert lock.read_lock(root)["host"] == socket.gethostname()
    lock.release(root, token)


def test_a_reused_pid_does_not_keep_a_dead_drivers_lock(tmp_path):
    root = str(tmp_path / "root")
    me = lock._record("t-old")
    store.write_json(lock.lock_uri(root), {**me, "pid_started_at": me["pid_started_at"] - 1000})
    token = lock.acquire(root, settle_s=0)  # our pid, but started after the lock was written: stale
    lock.release(root, token)


def test_heartbeat_refreshes_and_a_lost_lock_fences_the_shard_writer(tmp_path):
    from stages.shard import RunFenced, commit_shard

    root = str(tmp_path / "root")
    with lock.root_lock(root, heartbeat_s=0.2) as token:
        first = lock.read_lock(root)["heartbeat_at"]
        time.sleep(0.6)
        assert lock.read_lock(root)["heartbeat_at"] > first
        assert lock.holds(root, token)
        store.write_json(lock.lock_uri(root), {**lock.read_lock(root), "token": "t-new-driver"})  # taken over
        shard_dir = store.join(root, "shard")
        with pytest.raises(RunFenced):
            commit_shard(shard_dir, [("a", {"json": b"{}"})], pa.table({"key": ["a"]}), root, token)
        assert store.list_files(shard_dir) == []
    assert lock.read_lock(root)["token"] == "t-new-driver"  # leaving does not remove the new driver's lock
