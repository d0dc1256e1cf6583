"""The curation part of the run report: each score's histogram with its threshold, and what each
curation rule filtered, with example clips.

Scores are the per-row numbers a curation stage writes and filters on: ``motion`` (clip stage,
``clip.min_motion``) and the score stage's ``score_<field>`` columns (``score.min_similarity`` on
``score_<filter_field>``). The histograms count every row that has the score, kept (``ok``) and
filtered apart, so the threshold is seen against both sides. Thresholds come from the configuration
each stage recorded in its ``_SUCCESS.json`` (the run that completed it). The rules are told apart by
what a stage writes: the clip stage's filtered rows by their reason (still, a split parent, no piece
long enough), the score stage's by its ``score_rule`` column. Each rule keeps its first few rows as
examples; only those examples' first frames are read afterwards, from the parts that hold them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from contracts import manifest
from contracts.status import FILTERED, OK
from pipeline.report_measures import Histogram

EXAMPLES = 4  # rows shown per rule
MOTION_EDGES = [round(0.1 * i, 1) for i in range(31)]  # grey levels per 0.1 s; the top bin takes the rest
COSINE_EDGES = [round(-1 + 0.05 * i, 2) for i in range(41)]
# stage -> the rule a filtered row's reason names, by the reason's start (clip) or score_rule (score)
CLIP_RULES = (
    ("motion ", "clip.min_motion", "a clip (or a short video) stiller than the motion threshold"),
    ("split into ", "split into clips", "a long video's own row: its clips are rows of their own"),
    ("duration ", "clip.min_duration", "a long video none of whose pieces lasts the minimum"),
)
SCORE_RULES = {
    "min_similarity": ("score.min_similarity", "the filter field's score below the threshold"),
    "percentile": ("score.keep_percentile", "below the run's kept percentile of scores"),
    "near_dup": ("score.dedup", "a near-duplicate of a clip that was kept (named in the reason)"),
}


@dataclass
class ScoreHist:
    """One score over a stage's rows: kept and filtered counts per bin, and the threshold if any."""

    stage: str
    column: str
    threshold: float | None
    threshold_key: str | None
    kept: Histogram
    filtered: Histogram
    notes: list[str] = field(default_factory=list)


@dataclass
class RuleExample:
    video_id: str
    parent_id: str | None
    start: float | None
    end: float | None
    value: float | None  # the rule's score (motion, or the filter field's score)
    error: str
    frame: bytes | None = None  # the first frame (JPEG), when the run has it


@dataclass
class Rule:
    stage: str
    name: str
    meaning: str
    rows: int = 0
    examples: list[RuleExample] = field(default_factory=list)


@dataclass
class Curation:
    scores: list[ScoreHist]
    rules: list[Rule]


def _config(root: str, stage: str) -> dict[str, Any]:
    return (manifest.read_success(root, stage) or {}).get("config") or {}


def _columns(batch: pa.RecordBatch, names: list[str]) -> dict[str, list[Any]]:
    return {c: batch[c].to_pylist() if c in batch.schema.names else [None] * batch.num_rows for c in names}


def _clip_rule(error: str) -> tuple[str, str]:
    for prefix, name, meaning in CLIP_RULES:
        if error.startswith(prefix):
            return name, meaning
    return "other", "another reason (see the funnel's reasons)"


def _score_rule(rule: str | None) -> tuple[str, str]:
    return SCORE_RULES.get(
        rule or "", (f"score: {rule or 'other'}", "another reason (see the funnel's reasons)")
    )


def scan_curation(
    root: str, stage: str, names: list[str], batch_rows: int
) -> tuple[list[ScoreHist], list[Rule]]:
    """Histograms and rules of one curation stage (``clip`` or ``score``), one pass over its manifest."""
    from pipeline.report_stats import _batches  # the report's one Parquet batch reader

    cfg = _config(root, stage)
    if stage == "clip":
        score_cols = ["motion"] if "motion" in names else []
        thresholds = {"motion": (cfg.get("min_motion"), "clip.min_motion")}
        value_col = "motion"
    else:
        schema = manifest.read_schema(root, stage)
        numeric = {f.name for f in schema if pa.types.is_floating(f.type)} if schema is not None else set()
        score_cols = sorted(c for c in names if c.startswith("score_") and c in numeric)
        field_ = cfg.get("filter_field")
        value_col = f"score_{field_}" if field_ else (score_cols[0] if score_cols else None)
        thresholds = {value_col: (cfg.get("min_similarity"), "score.min_similarity")} if value_col else {}
    hists = {
        c: ScoreHist(
            stage,
            c,
            *thresholds.get(c, (None, None)),
            Histogram(MOTION_EDGES if c == "motion" else COSINE_EDGES),
            Histogram(MOTION_EDGES if c == "motion" else COSINE_EDGES),
        )
        for c in score_cols
    }
    if stage == "score" and cfg.get("keep_percentile") is not None and value_col in hists:
        hists[value_col].notes.append(
            f"score.keep_percentile {cfg['keep_percentile']:g}: the best share is kept"
        )
    if stage == "score" and cfg.get("dedup") and value_col in hists:
        what = "frame signatures" if cfg.get("dedup_embedding") == "frames" else "clip embeddings"
        hists[value_col].notes.append(
            f"score.dedup: clips whose {what} are at cosine {cfg.get('dedup_threshold')} or above are one"
        )
    rules: dict[str, Rule] = {}
    wanted = ["video_id", "status", "error", "parent_id", "start", "end", "score_rule", *score_cols]
    for uri in manifest.part_files(root, stage):
        for batch in _batches(uri, wanted, batch_rows):
            status = batch["status"]
            for c, h in hists.items():
                for which, hist in ((OK, h.kept), (FILTERED, h.filtered)):
                    rows = batch.filter(pc.equal(status, which))[c]
                    hist.add(rows.to_numpy(zero_copy_only=False).astype(float))
            bad = batch.filter(pc.equal(status, FILTERED))
            if not bad.num_rows:
                continue
            cols = _columns(bad, [*wanted, value_col] if value_col else wanted)
            for i, vid in enumerate(cols["video_id"]):
                error = cols["error"][i] or ""
                name, meaning = _clip_rule(error) if stage == "clip" else _score_rule(cols["score_rule"][i])
                rule = rules.setdefault(name, Rule(stage, name, meaning))
                rule.rows += 1
                if len(rule.examples) < EXAMPLES:
                    value = cols[value_col][i] if value_col else None
                    rule.examples.append(
                        RuleExample(vid, cols["parent_id"][i], cols["start"][i], cols["end"][i], value, error)
                    )
    scored = [
        h for h in hists.values() if h.kept.n + h.filtered.n
    ]  # a column no row has a value in: left out
    return scored, sorted(rules.values(), key=lambda r: -r.rows)


def attach_frames(root: str, rules: list[Rule], frame_stages: list[str]) -> None:
    """The first frame of each example, from the latest of ``frame_stages`` (clip, probe) holding it:
    a clip stage's filtered rows keep their frames; the score stage's come from clip or probe, with
    the clip's parent and span, which the score manifest does not repeat."""
    from pipeline.report_stats import _batches

    missing: dict[str, list[RuleExample]] = {}
    for e in (e for r in rules for e in r.examples):
        missing.setdefault(e.video_id, []).append(e)
    for stage in frame_stages:
        for uri in manifest.part_files(root, stage):
            if not missing:
                return
            ids = pa.array(list(missing), pa.string())
            if not any(
                pc.any(pc.is_in(b["video_id"], value_set=ids)).as_py() for b in _batches(uri, ["video_id"])
            ):
                continue
            for b in _batches(uri, ["video_id", "frames", "parent_id", "start", "end"], 64):
                hit = b.filter(pc.is_in(b["video_id"], value_set=ids)).to_pylist()
                for row in (r for r in hit if r["video_id"] in missing and r.get("frames")):
                    for e in missing.pop(row["video_id"]):
                        e.frame = row["frames"][0]
                        if e.parent_id is None and row.get("parent_id"):
                            e.parent_id, e.start, e.end = row["parent_id"], row.get("start"), row.get("end")


def collect_curation(
    root: str, present: list[str], schemas: dict[str, list[str]], batch_rows: int
) -> Curation | None:
    """The curation part of a report, or None when the run has no curation stage."""
    stages = [s for s in ("clip", "score") if s in present]
    if not stages:
        return None
    scores: list[ScoreHist] = []
    rules: list[Rule] = []
    for s in stages:
        h, r = scan_curation(root, s, schemas[s], batch_rows)
        scores += h
        rules += r
    attach_frames(root, rules, [s for s in ("clip", "probe") if s in present])
    return Curation(scores, rules)


def score_rows(h: ScoreHist) -> list[list[Any]]:
    """The table beside a score's histogram: rows kept and filtered, the threshold, mean / min / max."""
    both = Histogram(list(h.kept.edges))
    both.hist = h.kept.hist + h.filtered.hist
    both.n, both.sum = h.kept.n + h.filtered.n, h.kept.sum + h.filtered.sum
    both.lo, both.hi = min(h.kept.lo, h.filtered.lo), max(h.kept.hi, h.filtered.hi)
    rows: list[list[Any]] = [["rows kept (ok)", h.kept.n], ["rows filtered", h.filtered.n]]
    if h.threshold_key:
        rows.append([h.threshold_key, "none" if h.threshold is None else h.threshold])
    if both.n:
        rows += [[label, v] for label, v, _ in both.summary_rows("all rows")]
    return rows


def score_plot(h: ScoreHist) -> dict[str, Any]:
    edges = h.kept.edges.tolist()
    plot: dict[str, Any] = {
        "kind": "stacked",
        "edges": edges,
        "series": {"kept": h.kept.hist.tolist(), "filtered": h.filtered.hist.tolist()},
        "xlabel": f"{h.column} (grey levels / 0.1 s; last bar {edges[-2]:g}+)"
        if h.column == "motion"
        else f"{h.column} (cosine)",
    }
    if h.threshold is not None:
        plot["threshold"] = [float(h.threshold), h.threshold_key]
    return plot
