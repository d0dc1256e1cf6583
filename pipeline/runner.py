"""Turns stages into streaming Ray Data plans: read upstream manifests, skip what is done, process,
write manifest parts atomically, report progress and stats.

One plan per stage::

    upstream ok rows (joined on video_id) ─► drop done ids ─► stage.process ─► write parts ─► stats

Reading the upstream manifests (per-part reads, broadcast or hash join) is ``pipeline.upstream``. The done
ids are put in the object store once (one shared copy per node, not a set per worker): a
``pipeline.done_ids.DoneIds``, or, when the upstream's ids are known on the driver (every stage with an
upstream), the hashes of the ids still to do (``PendingIds``, 8 bytes an id); when the upstream holds no
id the stage has not done, the plan is not started at all.

Where a stage runs (tasks or an actor pool) is ``pipeline.workers``; what it writes and reports
(parts, stats, the stage end's repairs and compaction, ``_SUCCESS.json``) is ``pipeline.stage_output``.

Every side effect is safe to repeat: parts have fresh names and duplicates are removed before a stage
is declared complete; a stage that publishes beside its manifest (shard) reconciles at its start and
end. A driver holds the root's lock (``contracts.lock``) for the whole run, and a plan that makes no
progress for ``run.stall_timeout_s`` stops with ``StageStalled`` naming what it waits for
(``pipeline.stall``); what it finished is committed and a rerun continues.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import pyarrow as pa
import ray
from pydantic import BaseModel

from contracts import lock, manifest, store
from contracts.status import FAILED, FILTERED, OK
from contracts.worker_env import worker_env
from pipeline.config import section_hash
from pipeline.done_ids import DoneIds, PendingIds
from pipeline.stage_output import (
    Mode,
    StageReport,
    collect,
    finish_output,
    log_repairs,
    prepare_output,
    success_summary,
    write_part,
)
from pipeline.stall import StageStalled, StorageUnwritable, iterate_watched, unwritable_cause
from pipeline.upstream import upstream_input
from pipeline.workers import apply_stage, dedupe_batch, drop_done, read_source
from stages import get_stage_class
from stages.base import RunContext, Stage

log = logging.getLogger("vidal")


# -- Ray -------------------------------------------------------------------------------------------
def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Attach to a running cluster (``ray submit``, ``RAY_ADDRESS``, ``ray start``) or start a local one.

    ``address="local"`` always starts a fresh local instance.
    """
    if not ray.is_initialized():
        # The storage and Hugging Face settings travel to every worker of an attached cluster.
        env = {"env_vars": worker_env()}
        address = address or os.environ.get("RAY_ADDRESS")
        if address and address != "local":
            ray.init(address=address, runtime_env=env)
        else:
            try:
                if address == "local":
                    raise ConnectionError
                ray.init(address="auto", runtime_env=env)
                log.info("attached to the running Ray cluster")
            except (ConnectionError, RuntimeError, ValueError):
                ray.init(
                    address="local",
                    num_cpus=num_cpus or os.cpu_count(),
                    include_dashboard=False,
                    runtime_env=env,
                )
                log.info("started a local Ray instance with %s CPUs", ray.cluster_resources().get("CPU"))
    ctx = ray.data.DataContext.get_current()
    # On a terminal Ray Data draws live bars; elsewhere our periodic progress line is the progress.
    ctx.enable_progress_bars = sys.stderr.isatty()
    ctx.print_on_execution_start = False


# -- workers ---------------------------------------------------------------------------------------
# -- plans -----------------------------------------------------------------------------------------
def run_stage(config: BaseModel, name: str, mode: Mode = "resume") -> StageReport:
    """Run one stage over everything its upstream produced that it has not done yet.

    The input is planned (the upstream found and its parts read) and the stage's models checked before
    anything is deleted, so that --force with a missing upstream or a bad model file loses nothing."""
    started = time.time()
    cls = get_stage_class(name)
    section = getattr(config, name)
    root = store.normalize(config.run.root)
    context = RunContext(root=root, stage_config_hash=section_hash(section), run_token=lock.held_token(root))
    config_json = section.model_dump(mode="json")
    stage = cls(section, context)
    for s in (name, *cls.upstream, *cls.optional_upstream):
        manifest.recover_compaction(root, s)  # a merge a killed run left half done doubles no row
    ds, expected, upstream_ids = _plan_input(stage, config, root, config_json, context)
    stage.check()  # a model that cannot load fails here, before --force deletes anything
    prepare_output(root, name, mode)
    log_repairs(name, stage.reconcile())
    done = DoneIds.build(manifest.done_ids(root, name))
    report = StageReport(stage=name, skipped=len(done))
    ds = _skip_done(ds, done, upstream_ids, name)
    del done, upstream_ids  # shipped: the driver needs neither at the stage end (its own id reads)
    if ds is not None:
        stage.prepare()
        try:
            _execute(
                ds, stage, config, report, config_json, context, expected - report.skipped if expected else 0
            )
        finally:
            stage.finish()
    finish_output(stage, root, config.run.compact_target_mb, report)
    report.totals = manifest.status_counts(root, name)
    report.wall_s = round(time.time() - started, 3)
    manifest.write_success(root, name, success_summary(report, stage, context, config_json))
    return report


def _plan_input(
    stage: Stage, config: BaseModel, root: str, config_json: dict[str, Any], context: RunContext
) -> tuple[ray.data.Dataset | None, int, pa.Array | None]:
    """(plan, rows expected, the upstream's ids or a superset of them): the upstream manifests joined, or
    for a source stage its inputs read and deduplicated (rows and ids not known before the plan)."""
    cls = type(stage)
    if cls.upstream or cls.optional_upstream:
        return upstream_input(cls, config, root)
    items = stage.plan_inputs()
    if not items:
        return None, 0, None
    ds = ray.data.from_items(items).map_batches(
        read_source,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"name": stage.name, "config_json": config_json, "context": context},
    )
    return ds.map_batches(dedupe_batch, batch_format="pyarrow", batch_size=None), 0, None


def _skip_done(
    ds: ray.data.Dataset | None, done: DoneIds, upstream_ids: pa.Array | None, name: str
) -> ray.data.Dataset | None:
    """The plan without the done ids; None when the upstream holds nothing that is not done (a rerun
    with everything done starts no plan, no workers, no actors and their model loads)."""
    if ds is None or not len(done):
        return ds
    shipped: DoneIds | PendingIds = done  # a source stage's rows are not known before its plan
    if upstream_ids is not None:
        pending = done.pending(upstream_ids)
        if not len(pending):
            log.info(
                "[%s] all %d upstream rows are already done; not starting the stage's plan",
                name,
                len(upstream_ids),
            )
            return None
        shipped = PendingIds.build(pending)  # 8 bytes per id to do instead of ~35 per id done
    return ds.map_batches(drop_done, batch_format="pyarrow", fn_kwargs={"done_ref": [ray.put(shipped)]})


def _execute(
    ds: ray.data.Dataset,
    stage: Stage,
    config: BaseModel,
    report: StageReport,
    config_json: dict[str, Any],
    context: RunContext,
    expected: int,
) -> None:
    """Add the stage and the manifest writer to the plan and drive it."""
    # Blocks of at most rows_per_part rows: a task's output reaches the manifest when the task ends,
    # so this bounds what a killed run loses, and it spreads small runs over all workers.
    ds = ds.repartition(target_num_rows_per_block=config.run.rows_per_part)
    ds, waits_for, per = apply_stage(ds, stage, config_json, context, config.run.reuse_workers)
    ds = ds.map_batches(
        write_part,
        batch_size=config.run.rows_per_part,
        batch_format="pyarrow",
        fn_kwargs={"root": context.root, "stage": stage.name, "token": context.run_token},
    )
    batches = iterate_watched(ds, config.run.stall_timeout_s, stage.name, waits_for, per)
    collect(batches, report, expected, config.run.progress_interval_s)


def select_stages(config: BaseModel, stage: str | None, until: str | None) -> list[str]:
    """The stages to run: one (``--stage``), a prefix (``--until``), or all configured."""
    configured = list(config.run.stages)
    if stage:
        return [stage]
    if until:
        if until not in configured:
            raise ValueError(f"--until {until!r} is not among the configured stages {configured}")
        return configured[: configured.index(until) + 1]
    return configured


def run_pipeline(config: BaseModel, stages: list[str], mode: Mode = "resume") -> list[StageReport]:
    """Run stages in order; each reads what the previous ones wrote under the run root.

    The root's lock is taken first (``lock.RootLocked`` when another live driver holds it), before Ray
    starts. A stage that stalls (``StageStalled``) ends the run: this driver leaves Ray, which frees
    what its waiting actors hold, and the finished parts stay committed for the rerun. A root that
    stops taking writes (full disk, lost permission) ends it with ``StorageUnwritable``.
    """
    store.configure(config.run.storage)
    with lock.root_lock(config.run.root):
        init_ray(config.run.ray_address, config.run.num_cpus)
        reports = []
        for name in stages:
            log.info("[%s] starting", name)
            try:
                report = run_stage(config, name, mode)
            except StageStalled:
                ray.shutdown()
                raise
            except Exception as e:
                if (cause := unwritable_cause(e)) is None:
                    raise
                raise StorageUnwritable(
                    f"stage {name!r} stopped: {cause.strerror or cause} writing under {config.run.root}; what it "
                    f"finished is committed: free space (or restore write permission) and rerun the same command"
                ) from None
            log.info(
                "[%s] done: %d rows in %.1fs (ok %d, failed %d, filtered %d; %d already done)",
                name,
                report.rows_in,
                report.wall_s,
                report.counts[OK],
                report.counts[FAILED],
                report.counts[FILTERED],
                report.skipped,
            )
            reports.append(report)
    return reports
