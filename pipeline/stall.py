"""Stop a stage that makes no progress, with a message that says what it waits for.

A Ray Data plan whose actors cannot be placed (the GPU node was lost, the cluster never scales up)
waits forever behind Ray's "may hang forever unless the cluster scales up" warning. The runner drives
each plan through ``iterate_watched``: with Ray Data's no-progress guard where it has one (progress:
any block moving through any operator's queue; plans with a hash-shuffle join are not watched), else
by manifest parts reaching the driver (at most ``run.rows_per_part`` rows). When nothing moves for
``run.stall_timeout_s`` the stage stops with ``StageStalled`` naming the stage, the resources each
task or actor asks for, what the cluster has, and what to do. Parts written before are committed, so
the same command rerun on a healthy cluster continues where it stopped. ``stall_timeout_s`` must
exceed the longest quiet step of a stage (one batch of its slowest model); 0 turns the watch off.
"""

from __future__ import annotations

import errno
import os
import queue
import re
import threading
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import ray


class StageStopped(RuntimeError):
    """A stage stopped for a reason outside its rows; what it finished is committed, a rerun continues."""


class StageStalled(StageStopped):
    """A stage made no progress for ``run.stall_timeout_s``."""


class StorageUnwritable(StageStopped):
    """The run root stopped taking writes (full disk, quota, lost permission)."""


UNWRITABLE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS}


def unwritable_cause(error: BaseException) -> OSError | None:
    """The full-disk / permission ``OSError`` behind ``error`` (Ray wraps a worker's error), if any."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in UNWRITABLE_ERRNOS:
            return e
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    # a worker's error reaches the driver pickled, without its chain: only its text names the errno
    for code in re.findall(r"\[errno (\d+)\]", str(error), flags=re.IGNORECASE):
        if int(code) in UNWRITABLE_ERRNOS:
            return OSError(int(code), os.strerror(int(code)))
    return None


def _fmt(resources: dict[str, float]) -> str:
    return ", ".join(f"{resources.get(k, 0.0):g} {k}" for k in ("CPU", "GPU"))


def stall_message(stage: str, timeout_s: float, waits_for: dict[str, float], per: str) -> str:
    try:
        total, free = ray.cluster_resources(), ray.available_resources()
    except Exception:  # the cluster itself is gone
        total, free = {}, {}
    want = _fmt(waits_for)
    short = [k for k, v in waits_for.items() if v and total.get(k, 0.0) < v]
    hint = (
        f"the cluster has no node with {', '.join(short)} left: add such nodes (or lower "
        f"{stage}.num_gpus / {stage}.num_cpus)"
        if short
        else "the cluster is busy or a worker hangs: check `ray status`, or raise run.stall_timeout_s if "
        "one batch of this stage legitimately takes longer"
    )
    return (
        f"stage {stage!r} made no progress for {timeout_s:g}s: each {per} asks for {want}; the cluster has "
        f"{_fmt(total)} in total, {_fmt(free)} free. {hint[0].upper()}{hint[1:]}; then rerun the same command: "
        f"the rows finished so far are committed and are not redone"
    )


def _stop(ds: ray.data.Dataset) -> None:
    """Shut the plan's executor down, so that its thread stops scheduling (Ray Data keeps it on the
    dataset once the first block is out; before that, leaving Ray does it)."""
    executor = getattr(ds, "_current_executor", None)
    if executor is not None:
        try:
            executor.shutdown(force=True)
        except Exception:  # best effort: the driver leaves Ray next
            pass


def _watched_by_ray_data(
    ds: ray.data.Dataset, timeout_s: float, stage: str, waits_for: dict[str, float], per: str
) -> Iterator[pa.Table]:
    """Ray Data's own guard: progress is any block moving through any operator's queues, finer than our
    parts (it skips plans with a hash shuffle, whose long read phase moves nothing out)."""
    ds.context.execution_no_progress_timeout_s = timeout_s or -1
    try:
        yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")
    except Exception as e:
        if not _is_no_progress(e):
            raise
        raise StageStalled(stall_message(stage, timeout_s, waits_for, per)) from None


def _is_no_progress(error: BaseException | None) -> bool:
    while error is not None:
        if type(error).__name__ == "ExecutionTimeoutError":
            return True
        error = error.__cause__ or error.__context__
    return False


def iterate_watched(
    ds: ray.data.Dataset, timeout_s: float, stage: str, waits_for: dict[str, float], per: str
) -> Iterator[pa.Table]:
    """The plan's output blocks; ``StageStalled`` when none arrives for ``timeout_s`` (0: never)."""
    if hasattr(ds.context, "execution_no_progress_timeout_s"):  # Ray Data >= 2.60 watches its own plan
        yield from _watched_by_ray_data(ds, timeout_s, stage, waits_for, per)
        return
    blocks = ds.iter_batches(batch_size=None, batch_format="pyarrow")
    if not timeout_s:
        yield from blocks
        return
    out: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=8)

    def pump() -> None:  # Ray Data's iterator has no timeout: it runs in a thread, watched from here
        try:
            for block in blocks:
                out.put(("block", block))
            out.put(("end", None))
        except BaseException as e:  # re-raised on the driver's thread
            out.put(("error", e))

    threading.Thread(target=pump, daemon=True, name=f"vidal-{stage}-plan").start()
    while True:
        try:
            kind, value = out.get(timeout=timeout_s)
        except queue.Empty:
            message = stall_message(stage, timeout_s, waits_for, per)
            _stop(ds)
            raise StageStalled(message) from None
        if kind == "end":
            return
        if kind == "error":
            raise value
        yield value
