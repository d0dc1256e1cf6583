"""Turns stages into streaming Ray Data plans: read upstream manifests, skip what is done, process,
write manifest parts atomically, report progress and stats.

One plan per stage::

    upstream ok rows (joined on video_id) ─► drop done ids ─► stage.process ─► write parts ─► stats

Reading the upstream manifests (per-part reads, broadcast or hash join) is ``pipeline.upstream``. The done
ids are put in the object store once (one shared copy per node, not a set per worker): a
``pipeline.done_ids.DoneIds``, or, when the upstream's ids are known on the driver (every stage with an
upstream), the hashes of the ids still to do (``PendingIds``, 8 bytes an id); when the upstream holds no
id the stage has not done, the plan is not started at all.

Model stages run on an actor pool (``setup()`` once per actor, ``num_gpus`` from config); I/O and
CPU stages run as tasks that keep one stage instance per worker process. An actor holds its CPUs for
the whole stage while the reads and manifest writes around it are tasks, so a pool is sized to leave
one CPU for them (``fit_actor_pool``); otherwise on a one-CPU machine the actor takes the only CPU and
the reads never run.

Every side effect is safe to repeat: parts have fresh names and duplicates are removed before a stage
is declared complete; a stage that publishes beside its manifest (shard) reconciles at its start and
end. A driver holds the root's lock (``contracts.lock``) for the whole run, and a plan that makes no
progress for ``run.stall_timeout_s`` stops with ``StageStalled`` naming what it waits for
(``pipeline.stall``); what it finished is committed and a rerun continues.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pyarrow as pa
import ray
from pydantic import BaseModel

import contracts
from contracts import lock, manifest, store
from contracts.status import FAILED, FILTERED, OK
from contracts.worker_env import worker_env
from pipeline.config import section_hash
from pipeline.done_ids import DoneIds, PendingIds
from pipeline.stall import StageStalled, StorageUnwritable, iterate_watched, unwritable_cause
from pipeline.upstream import cached, upstream_input
from stages import get_stage_class
from stages.base import Resources, RunContext, Stage

log = logging.getLogger("vidal")
Mode = Literal["resume", "force", "retry_failed"]
TOP_REASONS = 5


@dataclass
class StageReport:
    """What one stage did in this run, and the state of its whole manifest after it."""

    stage: str
    rows_in: int = 0  # rows processed in this run
    skipped: int = 0  # rows already in the manifest (resume)
    counts: dict[str, int] = field(default_factory=lambda: {OK: 0, FAILED: 0, FILTERED: 0})
    totals: dict[str, int] = field(default_factory=dict)  # whole manifest, by status
    wall_s: float = 0.0
    parts: int = 0
    reasons: list[dict[str, Any]] = field(default_factory=list)  # top failure / filter reasons

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def _run_task(batch: pa.Table, name: str, config_json: dict[str, Any], context: RunContext) -> pa.Table:
    # One stage instance per worker process, so setup() (clients, caches) is paid once.
    key = (name, context.stage_config_hash)
    if key not in _WORKER_STAGES:
        _WORKER_STAGES[key] = _make_stage(name, config_json, context)
    stage = _WORKER_STAGES[key]
    return _checked(stage, stage.process(batch))


class _StageActor:
    """Actor-pool wrapper: loads the stage's models once, then processes batches."""

    def __init__(self, name: str, config_json: dict[str, Any], context: RunContext):
        self.stage = _make_stage(name, config_json, context)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _checked(self.stage, self.stage.process(batch))


def _read_source(
    items: pa.Table, name: str, config_json: dict[str, Any], context: RunContext
) -> Iterator[pa.Table]:
    cls = get_stage_class(name)
    stage = cls(cls.Config.model_validate(config_json), context)
    for item in items.to_pylist():
        yield from stage.read_inputs(item)


def _drop_done(batch: pa.Table, done_ref: list[Any]) -> pa.Table:
    (done,) = cached(_DONE_IDS, done_ref, lambda d: d)
    return done.keep_pending(batch) if isinstance(done, PendingIds) else done.drop_done(batch)


def _dedupe_batch(batch: pa.Table) -> pa.Table:
    ids = batch["video_id"].to_pylist()
    first = {v: i for i, v in reversed(list(enumerate(ids)))}
    return batch.take(sorted(first.values())) if len(first) < len(ids) else batch


def _write_part(batch: pa.Table, root: str, stage: str, token: str | None = None) -> pa.Table:
    """Write one manifest part and return one stats row describing it; nothing once the run lost the lock."""
    if not lock.holds(root, token):
        raise lock.RootLocked(f"[{stage}] the lock on {root} was taken over by another driver; not writing")
    store.write_parquet(manifest.new_part_uri(root, stage), batch)
    statuses = batch["status"].to_pylist()
    reasons = collections.Counter()
    example: dict[tuple[str, str], str] = {}
    for vid, status, err in zip(batch["video_id"].to_pylist(), statuses, batch["error"].to_pylist()):
        if status != OK:
            k = (status, err or "")
            reasons[k] += 1
            example.setdefault(k, vid)
    c = collections.Counter(statuses)
    return pa.table(
        {
            "rows": [len(batch)],
            OK: [c[OK]],
            FAILED: [c[FAILED]],
            FILTERED: [c[FILTERED]],
            "reasons": [
                [
                    {"status": s, "reason": r, "count": n, "example": example[(s, r)]}
                    for (s, r), n in reasons.most_common(TOP_REASONS * 4)
                ]
            ],
        }
    )


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
    _prepare_output(root, name, mode)
    _log_repairs(name, stage.reconcile())
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
    _finish_output(stage, root, config.run.compact_target_mb)
    report.totals = manifest.status_counts(root, name)
    report.wall_s = round(time.time() - started, 3)
    manifest.write_success(root, name, _success_summary(report, stage, context, config_json))
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
        _read_source,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"name": stage.name, "config_json": config_json, "context": context},
    )
    return ds.map_batches(_dedupe_batch, batch_format="pyarrow", batch_size=None), 0, None


def _prepare_output(root: str, name: str, mode: Mode) -> None:
    """Clear what this run redoes: the whole output (--force), the failed rows (--retry-failed) or the
    transient failures (resume); temp files and the stale ``_SUCCESS.json`` always."""
    out_dir = manifest.stage_dir(root, name)
    if mode == "force":
        store.remove(out_dir)
    store.remove_temp_files(out_dir)
    manifest.clear_success(root, name)
    if mode == "retry_failed":
        log.info("[%s] retrying %d failed rows", name, manifest.drop_status(root, name, FAILED))
    elif n := manifest.drop_transient_failures(root, name):
        log.info("[%s] retrying %d rows that failed for a transient reason", name, n)


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
    return ds.map_batches(_drop_done, batch_format="pyarrow", fn_kwargs={"done_ref": [ray.put(shipped)]})


def _finish_output(stage: Stage, root: str, compact_target_mb: float) -> None:
    """After the plan: publish-side repairs, duplicates of a killed run removed, small parts merged and
    the per-part statistics written (what ``_SUCCESS.json`` counts from)."""
    _log_repairs(stage.name, stage.reconcile())
    if removed := manifest.dedupe(root, stage.name):
        log.warning("[%s] removed %d duplicate rows left by an earlier, killed run", stage.name, removed)
    c = manifest.compact(root, stage.name, int(compact_target_mb * 2**20), _on_ray)
    if c["merges"]:
        log.info("[%s] compacted %d manifest parts into %d", stage.name, c["parts_before"], c["parts_after"])


def _on_ray(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """``map`` over Ray tasks, one per item (here, for one item or without Ray)."""
    if len(items) <= 1 or not ray.is_initialized():
        return [fn(i) for i in items]
    task = ray.remote(_apply)
    return ray.get([task.remote(fn, i) for i in items])


def _apply(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


def _success_summary(
    report: StageReport, stage: Stage, context: RunContext, config_json: dict[str, Any]
) -> dict[str, Any]:
    return {
        "stage": stage.name,
        "rows_in": report.rows_in,
        "skipped_already_done": report.skipped,
        "this_run": report.counts,
        "totals": report.totals,
        "top_reasons": report.reasons,
        "wall_s": report.wall_s,
        "rows_per_s": round(report.rows_in / report.wall_s, 3) if report.wall_s else None,
        "config_hash": context.stage_config_hash,
        "config": config_json,
        "models": stage.models(),
        **stage.summary(),
        "vidal_version": contracts.__version__,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _log_repairs(name: str, repairs: dict[str, int]) -> None:
    if any(repairs.values()):
        log.warning(
            "[%s] repaired what an earlier, interrupted run left: %s",
            name,
            ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in repairs.items() if v),
        )


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
    res = fit_actor_pool(stage.resources(), ray.cluster_resources(), stage.name)
    # Blocks of at most rows_per_part rows: a task's output reaches the manifest when the task ends,
    # so this bounds what a killed run loses, and it spreads small runs over all workers.
    ds = ds.repartition(target_num_rows_per_block=config.run.rows_per_part)
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
            _StageActor,
            fn_constructor_kwargs=kwargs,
            **common,
            compute=ray.data.ActorPoolStrategy(min_size=res.actors[0], max_size=res.actors[1]),
        )
    else:
        ds = ds.map_batches(_run_task, fn_kwargs=kwargs, **common)
    ds = ds.map_batches(
        _write_part,
        batch_size=config.run.rows_per_part,
        batch_format="pyarrow",
        fn_kwargs={"root": context.root, "stage": stage.name, "token": context.run_token},
    )
    per = "actor" if res.actors else "task"
    batches = iterate_watched(ds, config.run.stall_timeout_s, stage.name, waits_for, per)
    _collect(batches, report, expected, config.run.progress_interval_s)


def _collect(batches: Iterator[pa.Table], report: StageReport, expected: int, interval_s: float) -> None:
    """Drive the streaming plan, aggregating per-part stats and printing a periodic progress line."""
    reasons: collections.Counter[tuple[str, str]] = collections.Counter()
    examples: dict[tuple[str, str], str] = {}
    t0 = last = time.time()
    for batch in batches:
        for row in batch.to_pylist():
            report.rows_in += row["rows"]
            report.parts += 1
            for s in (OK, FAILED, FILTERED):
                report.counts[s] += row[s]
            for r in row["reasons"]:
                k = (r["status"], r["reason"])
                reasons[k] += r["count"]
                examples.setdefault(k, r["example"])
        if time.time() - last >= interval_s:
            last = time.time()
            rate = report.rows_in / max(last - t0, 1e-9)
            of = f"/{expected}" if expected > 0 else ""
            log.info(
                "[%s] %d%s rows (ok %d, failed %d, filtered %d) %.1f rows/s",
                report.stage,
                report.rows_in,
                of,
                report.counts[OK],
                report.counts[FAILED],
                report.counts[FILTERED],
                rate,
            )
    report.reasons = [
        {"status": s, "reason": r, "count": n, "example": examples[(s, r)]}
        for (s, r), n in reasons.most_common(TOP_REASONS)
    ]


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


def summary_table(reports: list[StageReport]) -> str:
    """The final per-stage table printed at the end of a run: this run's rows, then the whole manifest's."""
    head = (
        f"{'stage':<10} {'in':>7} {'ok':>7} {'failed':>7} {'filtered':>8} {'skipped':>8} {'total ok':>8} "
        f"{'total failed':>12} {'wall s':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in reports:
        lines.append(
            f"{r.stage:<10} {r.rows_in:>7} {r.counts[OK]:>7} {r.counts[FAILED]:>7} "
            f"{r.counts[FILTERED]:>8} {r.skipped:>8} {r.totals.get(OK, 0):>8} "
            f"{r.totals.get(FAILED, 0):>12} {r.wall_s:>8.1f}"
        )
    return "\n".join(lines)


def failure_note(reports: list[StageReport], root: str) -> str | None:
    """Where the failed rows are, counted over each stage's whole manifest (not only this run's)."""
    where = [(r.stage, r.totals.get(FAILED, 0)) for r in reports if r.totals.get(FAILED, 0)]
    if not where:
        return None
    total = sum(n for _, n in where)
    stages = ", ".join(f"{s} {n}" for s, n in where)
    return (
        f"{total} rows failed ({stages}); their reasons are in {root}/<stage>/part-*.parquet (status='failed', "
        f"error) and each _SUCCESS.json's top_reasons; rows failed for a transient reason are retried by a "
        f"plain rerun, --retry-failed redoes all of them"
    )
