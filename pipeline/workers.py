"""What runs inside the Ray workers of a stage's plan, and how a stage is placed on them.

Model stages run on an actor pool (``setup()`` once per actor, ``num_gpus`` from config); I/O and CPU
stages run as tasks that keep one stage instance per worker process. An actor holds its CPUs for the
whole stage while the reads and manifest writes around it are tasks, so a pool is sized to leave one CPU
for them (``fit_actor_pool``); otherwise on a one-CPU machine the actor takes the only CPU and the reads
never run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import ray

from pipeline.done_ids import DoneIds, PendingIds
from pipeline.upstream import cached
from stages import get_stage_class
from stages.base import Resources, RunContext, Stage

log = logging.getLogger("vidal")

_WORKER_STAGES: dict[tuple[str, str], Stage] = {}
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


def run_task(batch: pa.Table, name: str, config_json: dict[str, Any], context: RunContext) -> pa.Table:
    # One stage instance per worker process, so setup() (clients, caches) is paid once.
    key = (name, context.stage_config_hash)
    if key not in _WORKER_STAGES:
        _WORKER_STAGES[key] = _make_stage(name, config_json, context)
    stage = _WORKER_STAGES[key]
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


def apply_stage(
    ds: ray.data.Dataset, stage: Stage, config_json: dict[str, Any], context: RunContext
) -> tuple[ray.data.Dataset, dict[str, float], str]:
    """The plan with the stage's processing added: (plan, the resources one worker waits for, "actor" or
    "task"), the last two for the stall message."""
    res = fit_actor_pool(stage.resources(), ray.cluster_resources(), stage.name)
    kwargs = {"name": stage.name, "config_json": config_json, "context": context}
    common: dict[str, Any] = {
        "batch_size": res.batch_size,
        "batch_format": "pyarrow",
        "num_cpus": res.num_cpus,
    }
    waits_for = {"CPU": res.num_cpus, **({"GPU": res.num_gpus} if res.num_gpus else {})}
    if res.num_gpus:
        common["num_gpus"] = res.num_gpus
    if res.actors:
        ds = ds.map_batches(
            StageActor,
            fn_constructor_kwargs=kwargs,
            **common,
            compute=ray.data.ActorPoolStrategy(min_size=res.actors[0], max_size=res.actors[1]),
        )
        return ds, waits_for, "actor"
    return ds.map_batches(run_task, fn_kwargs=kwargs, **common), waits_for, "task"
