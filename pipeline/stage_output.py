"""What a stage's plan leaves behind: manifest parts and their stats, the output cleared before a run and
repaired, deduplicated and compacted after it, the ``_SUCCESS.json`` summary, and the report printed.

Every side effect is safe to repeat: parts have fresh names and duplicates are removed before a stage
is declared complete; a stage that publishes beside its manifest (shard) reconciles at its start and
end. A part is written only while this driver still holds the root's lock (``contracts.lock``).
"""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import ray

import contracts
from contracts import lock, manifest, store
from contracts.id_hash import id_hashes
from contracts.stage_end import Written, end_stage
from contracts.status import FAILED, FILTERED, OK
from stages.base import RunContext, Stage

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
    # each part's statistics and ids' hashes as its writer reported them, for the stage end
    written: Written = field(default_factory=Written, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "written"}


def write_part(batch: pa.Table, root: str, stage: str, token: str | None = None) -> pa.Table:
    """Write one manifest part and return one stats row describing it (counts and reasons for the report;
    the part's name, ``_parts.json`` entry and ids' hashes for the stage end, which then need not read
    it); nothing once the run lost the lock."""
    if not lock.holds(root, token):
        raise lock.RootLocked(f"[{stage}] the lock on {root} was taken over by another driver; not writing")
    uri = manifest.new_part_uri(root, stage)
    entry = manifest.write_part_file(uri, batch)
    reasons = collections.Counter()
    example: dict[tuple[str, str], str] = {}
    # the entry counted each status; the reasons need only the rows that are not ok
    not_ok = batch.filter(pc.fill_null(pc.not_equal(batch["status"], OK), True))
    for vid, status, err in zip(*(not_ok[c].to_pylist() for c in ("video_id", "status", "error"))):
        k = (status, err or "")
        reasons[k] += 1
        example.setdefault(k, vid)
    return pa.table(
        {
            "part": [uri.rsplit("/", 1)[1]],
            "entry": [json.dumps(entry)],
            "hashes": pa.array([id_hashes(batch["video_id"]).tobytes()], pa.binary()),
            "rows": [len(batch)],
            OK: [entry[OK]],
            FAILED: [entry[FAILED]],
            FILTERED: [entry[FILTERED]],
            "reasons": [
                [
                    {"status": s, "reason": r, "count": n, "example": example[(s, r)]}
                    for (s, r), n in reasons.most_common(TOP_REASONS * 4)
                ]
            ],
        }
    )


def collect(batches: Iterator[pa.Table], report: StageReport, expected: int, interval_s: float) -> None:
    """Drive the streaming plan, aggregating per-part stats and printing a periodic progress line."""
    reasons: collections.Counter[tuple[str, str]] = collections.Counter()
    examples: dict[tuple[str, str], str] = {}
    t0 = last = time.time()
    for batch in batches:
        for row in batch.to_pylist():
            report.rows_in += row["rows"]
            report.parts += 1
            report.written.add(row["part"], json.loads(row["entry"]), row["hashes"])
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


def prepare_output(root: str, name: str, mode: Mode) -> None:
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


def finish_output(
    stage: Stage, root: str, compact_target_mb: float, report: StageReport | None = None
) -> None:
    """After the plan: publish-side repairs, the stage's run-wide rules, duplicates of a killed run removed, small parts merged and
    the per-part statistics written (what ``_SUCCESS.json`` counts from), in one read of each part this
    run wrote (``contracts.stage_end``; without ``report``, the parts its writers reported are read too)."""
    log_repairs(stage.name, stage.reconcile())
    stage.after_plan()  # run-wide rules (score): the parts they rewrite are read below as unreported
    written = report.written if report is not None else None
    c = end_stage(root, stage.name, int(compact_target_mb * 2**20), written, on_ray)
    if report is not None:
        report.written = Written()  # the hashes are no longer needed: free them before _SUCCESS.json
    log.debug("[%s] stage end: %s", stage.name, c)
    if c["duplicates_removed"]:
        log.warning(
            "[%s] removed %d duplicate rows left by an earlier, killed run",
            stage.name,
            c["duplicates_removed"],
        )
    if c["merges"]:
        log.info("[%s] compacted %d manifest parts into %d", stage.name, c["parts_before"], c["parts_after"])


def on_ray(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """``map`` over Ray tasks, one per item (here, for one item or without Ray)."""
    if len(items) <= 1 or not ray.is_initialized():
        return [fn(i) for i in items]
    task = ray.remote(_apply)
    return ray.get([task.remote(fn, i) for i in items])


def _apply(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


def success_summary(
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


def log_repairs(name: str, repairs: dict[str, int]) -> None:
    if any(repairs.values()):
        log.warning(
            "[%s] repaired what an earlier, interrupted run left: %s",
            name,
            ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in repairs.items() if v),
        )


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
