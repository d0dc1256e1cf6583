"""What runs inside the Ray workers of a stage's plan, and how a stage is placed on them.

Stages run as Ray Data tasks on Ray's worker processes, which Ray reuses from task to task and from one
stage's plan to the next. A process builds a stage's instance on its first batch there (``setup()``
once per process and stage) and holds at most one model stage's: the next stage's first batch drops the
model the process served before, so the heavy imports (torch, transformers: 1-5 s) are paid once per
process for the whole run and the models do not pile up across stages. A model stage's
``actors: [min, max]`` bounds how many of its tasks run at once (``max``), as it bounded its pool.

Stages that ask for a GPU keep an actor pool per stage (``setup()`` once per actor, ``num_gpus`` from
config): Ray gives a GPU task a fresh process (``max_calls=1``), because the device a process sees
(``CUDA_VISIBLE_DEVICES``) is fixed when CUDA starts in it, so reusing the process for another GPU
could put two stages on one device. An actor holds its CPUs for the whole stage while the reads and
manifest writes around it are tasks, so a pool is sized to leave one CPU for them
(``fit_actor_pool``); otherwise on a one-CPU machine the actor takes the only CPU and the reads never
run.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import math
import sys
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import ray

from pipeline.done_ids import DoneIds, PendingIds
from pipeline.upstream import cached
from stages import get_stage_class
from stages.base import Resources, RunContext, Stage

log = logging.getLogger("vidal")

# this process's stage instances: of one run at a time (the run's context is in the key, so a stage of another
# run on the same cluster never gets this one's instance), with at most one model stage among them
_WORKER_STAGES: dict[tuple[str, RunContext], Stage] = {}
_DONE_IDS: dict[str, DoneIds | PendingIds] = {}  # the current stage's, zero-copy from the object store


def _make_stage(name: str, config_json: dict[str, Any], context: RunContext) -> Stage:
    cls = get_stage_class(name)
    stage = cls(cls.Config.model_validate(config_json), context)
    stage.setup()
    return stage


def _checked(stage: Stage, out: pa.Table) -> pa.Table:
    schema = stage.output_schema()
    missing = [f.name for f in schema if f.name not in out.column_names]
    if missing:
        raise RuntimeError(f"stage {stage.name} returned a batch without columns {missing}")
    return out.select(schema.names).cast(schema)


def worker_stage(name: str, config_json: dict[str, Any], context: RunContext) -> Stage:
    """This process's instance of the stage, built (``setup()``) on its first batch here. Building one
    first drops the model stage the process served before, and any stage of another run: a process holds
    at most one model, while the light stages' instances (clients, caches) stay for the run."""
    key = (name, context)
    stage = _WORKER_STAGES.get(key)
    if stage is None:
        release_worker_stages(keep=context)
        stage = _WORKER_STAGES[key] = _make_stage(name, config_json, context)
    return stage


def release_worker_stages(keep: RunContext | None = None) -> None:
    """Drop this process's model stage instances and those of another run than ``keep``'s (its root and
    lock token; every instance without it), and give a dropped model's memory back (its tensors, the
    heap pages they used)."""
    run = None if keep is None else (keep.root, keep.run_token)
    dropped = [k for k, s in _WORKER_STAGES.items() if s.uses_model or (k[1].root, k[1].run_token) != run]
    models = any(_WORKER_STAGES[k].uses_model for k in dropped)
    for k in dropped:
        del _WORKER_STAGES[k]
    if not models:  # light instances go by reference counting; a full collection with torch and
        # transformers imported costs ~0.1 s of CPU (235k objects)
        return
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    try:  # glibc keeps freed heap pages mapped; hand them back so the process's RSS shrinks
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def fit_torch_threads() -> None:
    """torch's threads to this task's CPUs. Ray sets ``OMP_NUM_THREADS`` from each task's ``num_cpus``,
    but torch reads it once, at its import: in a reused process, under an earlier stage's task."""
    torch = sys.modules.get("torch")
    if torch is None or not ray.is_initialized():
        return
    runtime = ray.get_runtime_context()
    if runtime.worker.mode != ray.WORKER_MODE:  # called in the driver (a plain loop)
        return
    threads = max(1, math.floor(runtime.get_assigned_resources().get("CPU", 1.0)))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def run_task(batch: pa.Table, name: str, config_json: dict[str, Any], context: RunContext) -> pa.Table:
    stage = worker_stage(name, config_json, context)
    fit_torch_threads()
    return _checked(stage, stage.process(batch))


class StageActor:
    """Actor-pool wrapper: loads the stage's models once, then processes batches."""

    def __init__(self, name: str, config_json: dict[str, Any], context: RunContext):
        self.stage = _make_stage(name, config_json, context)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _checked(self.stage, self.stage.process(batch))


def read_source(
    items: pa.Table, name: str, config_json: dict[str, Any], context: RunContext
) -> Iterator[pa.Table]:
    cls = get_stage_class(name)
    stage = cls(cls.Config.model_validate(config_json), context)
    for item in items.to_pylist():
        yield from stage.read_inputs(item)


def drop_done(batch: pa.Table, done_ref: list[Any]) -> pa.Table:
    (done,) = cached(_DONE_IDS, done_ref, lambda d: d)
    return done.keep_pending(batch) if isinstance(done, PendingIds) else done.drop_done(batch)


def dedupe_batch(batch: pa.Table) -> pa.Table:
    ids = batch["video_id"].to_pylist()
    first = {v: i for i, v in reversed(list(enumerate(ids)))}
    return batch.take(sorted(first.values())) if len(first) < len(ids) else batch


def fit_actor_pool(res: Resources, cluster: dict[str, float], stage: str) -> Resources:
    """The stage's resources with the actor pool fitted to the cluster: its smallest size leaves at least
    one CPU for the read and write tasks around it, which otherwise never run."""
    if not res.actors:
        return res
    lo, hi = res.actors
    room = cluster.get("CPU", 0.0) - 1.0  # one CPU for the reads and manifest writes
    cpus = res.num_cpus
    if cpus * lo > room:
        cpus = max(0.0, room / lo)
        log.warning(
            "[%s] the cluster has %g CPUs: each of its %d actors reserves %g CPUs instead of %g, so "
            "that reads and writes can run beside them",
            stage,
            cluster.get("CPU", 0.0),
            lo,
            cpus,
            res.num_cpus,
        )
    # the upper bound stays: Ray Data adds actors only as resources free up (or the cluster scales up)
    return Resources(res.batch_size, cpus, res.num_gpus, (lo, hi))


def fit_tasks(res: Resources, cluster: dict[str, float], stage: str) -> Resources:
    """The stage's resources for tasks: at most the cluster's CPUs per task (a larger ask never runs)."""
    total = cluster.get("CPU", 0.0)
    if 0 < total < res.num_cpus:
        log.warning(
            "[%s] the cluster has %g CPUs: each task reserves %g CPUs instead of %g",
            stage,
            total,
            total,
            res.num_cpus,
        )
        return Resources(res.batch_size, total, res.num_gpus, res.actors)
    return res


def apply_stage(
    ds: ray.data.Dataset,
    stage: Stage,
    config_json: dict[str, Any],
    context: RunContext,
    reuse_workers: bool = True,
) -> tuple[ray.data.Dataset, dict[str, float], str]:
    """The plan with the stage's processing added: (plan, the resources one worker waits for, "actor" or
    "task"), the last two for the stall message. GPU stages run on an actor pool, the others as tasks
    on the cluster's reused worker processes (a model stage's tasks bounded by its ``actors`` maximum);
    without ``reuse_workers`` (``run.reuse_workers: false``) every model stage gets its actor pool."""
    res = stage.resources()
    pool = bool(res.actors and (res.num_gpus or not reuse_workers))
    cluster = ray.cluster_resources()
    res = fit_actor_pool(res, cluster, stage.name) if pool else fit_tasks(res, cluster, stage.name)
    kwargs = {"name": stage.name, "config_json": config_json, "context": context}
    common: dict[str, Any] = {
        "batch_size": res.batch_size,
        "batch_format": "pyarrow",
        "num_cpus": res.num_cpus,
    }
    waits_for = {"CPU": res.num_cpus, **({"GPU": res.num_gpus} if res.num_gpus else {})}
    if res.num_gpus:
        common["num_gpus"] = res.num_gpus
    if pool:
        assert res.actors is not None
        ds = ds.map_batches(
            StageActor,
            fn_constructor_kwargs=kwargs,
            **common,
            compute=ray.data.ActorPoolStrategy(min_size=res.actors[0], max_size=res.actors[1]),
        )
        return ds, waits_for, "actor"
    if res.actors:
        common["compute"] = ray.data.TaskPoolStrategy(size=res.actors[1])
    return ds.map_batches(run_task, fn_kwargs=kwargs, **common), waits_for, "task"
