"""The numbers of a run report, streamed from the stage manifests.

Each statistic is taken over the ``ok`` rows of the stage that owns its column: the latest stage in
pipeline order whose manifest has it (the runner's rule too), so probe's measured duration wins over
the one discover was told. Each stage's manifest is read once, part by part, in batches, with only
the columns its statistics need (never frames or audio); depth maps are big, so their pixel
statistics come from a random sample of rows. The funnel reads ``status`` and ``error`` of every row.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from contracts import manifest, store
from contracts.shard_format import MODEL_COLUMN_SUFFIX
from contracts.status import FAILED, FILTERED, OK
from pipeline.report_curation import Curation, collect_curation
from pipeline.report_measures import (
    COUNTER_CAP,
    TEXT_FIELDS,
    Acc,
    BoundedCounter,
    DepthAcc,
    SearchAcc,
    Stat,
    TextAcc,
    make_accumulators,
    text_lengths,
)
from stages import STAGE_ORDER

BATCH_ROWS = 4096
TOP_REASONS = 5
DEPTH_ROWS = 64  # rows whose depth maps are decoded for the depth statistics
SHARD_FLAGS = ("has_audio", "has_depth", "has_ir")
STAT_ORDER = (
    "duration",
    "resolution",
    "aspect",
    "fps",
    "audio",
    "asr_language",
    "text",
    "search",
    "depth",
    "depth_kind",
    "models",
)


@dataclass
class Reason:
    """A group of failed or filtered rows whose reasons differ only in paths, ids and numbers."""

    status: str
    pattern: str
    count: int
    example_id: str
    example_error: str


@dataclass
class StageFunnel:
    """One stage's whole manifest by status, plus what its last completed run recorded."""

    stage: str
    counts: dict[str, int] = field(default_factory=lambda: {OK: 0, FAILED: 0, FILTERED: 0})
    reasons: list[Reason] = field(default_factory=list)
    success: dict[str, Any] | None = None  # _SUCCESS.json; None while running or after a kill

    @property
    def rows(self) -> int:
        return sum(self.counts.values())


@dataclass
class RunStats:
    """Everything the report shows except the samples."""

    root: str
    funnel: list[StageFunnel]
    stats: list[Stat]
    shards: dict[str, Any] | None  # None: no shard stage yet
    curation: Curation | None = None  # None: no curation stage (clip, score) in the run


_PATHS = re.compile(r"(?<![\w.])(?:[A-Za-z][A-Za-z0-9+.-]*://|/)[^\s'\"()<>,;]+")
_HEX = re.compile(r"\b[0-9a-f]{8,}\b")
_NUMBERS = re.compile(r"\d+(?:\.\d+)?")


def reason_pattern(error: str | None) -> str:
    """A reason with paths, hex ids and numbers masked, so rows failing the same way group together."""
    text = _PATHS.sub("<path>", error or "(no reason given)")
    return _NUMBERS.sub("#", _HEX.sub("<id>", text))


def _batches(uri: str, columns: list[str], batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Batches of the named columns of one Parquet file; a column this file lacks is left out."""
    with store.open_input(uri) as f:
        pf = pq.ParquetFile(f)
        names = set(pf.schema_arrow.names)
        yield from pf.iter_batches(batch_size=batch_rows, columns=[c for c in columns if c in names])


def stages_present(root: str) -> list[str]:
    """Stages with a manifest or a ``_SUCCESS.json`` under the root, in pipeline order."""
    return [s for s in STAGE_ORDER if manifest.has_output(root, s) or manifest.read_success(root, s)]


def stage_columns(root: str, stage: str) -> list[str]:
    """The columns of a stage's manifest: the union over its parts (older parts may lack newer columns)."""
    names: dict[str, None] = {}
    for uri in manifest.part_files(root, stage):
        fs, path = store.resolve(uri)
        names.update(dict.fromkeys(pq.read_schema(path, filesystem=fs).names))
    return list(names)


def owner(schemas: dict[str, list[str]], column: str) -> str | None:
    """The latest stage in pipeline order whose manifest has ``column`` (the runner's rule)."""
    having = [s for s in schemas if column in schemas[s] and s != "shard"]
    return having[-1] if having else None


def scan_stage(
    root: str, stage: str, accs: list[Acc], batch_rows: int = BATCH_ROWS
) -> tuple[StageFunnel, Counter]:
    """One pass over a stage's manifest: statuses and reasons of all rows, ``accs`` fed its ok rows.

    Also returns the rows per model of the stage's ``{stage}_model`` columns.
    """
    funnel = StageFunnel(stage, success=manifest.read_success(root, stage))
    names = stage_columns(root, stage)
    model_cols = [c for c in names if c.endswith(MODEL_COLUMN_SUFFIX)]
    wanted = sorted({c for a in accs for c in a.columns if c in names} - {"video_id", "status", "error"})
    reasons, examples = BoundedCounter(), {}
    models: Counter[tuple[str, str]] = Counter()
    for uri in manifest.part_files(root, stage):
        for batch in _batches(uri, ["video_id", "status", "error", *wanted, *model_cols], batch_rows):
            for status, n in Counter(batch["status"].to_pylist()).items():
                funnel.counts[status] = funnel.counts.get(status, 0) + n
            bad = batch.filter(pc.not_equal(batch["status"], OK)).select(["video_id", "status", "error"])
            for row in bad.to_pylist():
                k = (row["status"], reason_pattern(row["error"]))
                reasons.add(k)
                examples.setdefault(k, (row["video_id"], row["error"] or ""))
            ok = batch.filter(pc.equal(batch["status"], OK))
            for a in accs:
                if any(c in ok.schema.names for c in a.columns):  # a part older than its columns has none
                    a.feed(ok)
            for c in (c for c in model_cols if c in ok.schema.names):
                for m, n in Counter(ok[c].to_pylist()).items():
                    models[(c[: -len(MODEL_COLUMN_SUFFIX)], m or "(none)")] += n
        if len(examples) > 2 * COUNTER_CAP:  # keep the examples as bounded as the counter
            examples = {k: v for k, v in examples.items() if k in reasons.counts}
    for status in (FAILED, FILTERED):
        top = [(k, n) for k, n in reasons.counts.most_common() if k[0] == status][:TOP_REASONS]
        funnel.reasons += [Reason(status, k[1], n, *examples[k]) for k, n in top]
    return funnel, models


def depth_sample(root: str, stage: str, max_rows: int, seed: int) -> DepthAcc:
    """Depth statistics of up to ``max_rows`` ok rows from randomly ordered parts, read 16 rows at a time."""
    acc = DepthAcc()
    parts = manifest.part_files(root, stage)
    random.Random(seed).shuffle(parts)
    for uri in parts:
        for batch in _batches(uri, ["status", "depth"], batch_rows=16):
            for frames in batch.filter(pc.equal(batch["status"], OK))["depth"].to_pylist():
                if acc.rows >= max_rows:
                    return acc
                acc.add_frames(frames)
    return acc


def shard_totals(root: str) -> dict[str, Any]:
    """Tars, samples, bytes and samples with audio / depth / infrared, from the shard indexes."""
    out = {"shards": 0, "samples": 0, "bytes": 0, **dict.fromkeys(SHARD_FLAGS, 0)}
    for uri in store.list_files(store.join(root, "shard"), suffix=".parquet"):
        if uri.rsplit("/", 1)[1].startswith(manifest.PART_PREFIX):
            continue  # the shard stage's own manifest, not an index
        out["shards"] += 1
        for batch in _batches(uri, ["bytes", *SHARD_FLAGS]):
            out["samples"] += batch.num_rows
            out["bytes"] += pc.sum(batch["bytes"]).as_py() or 0
            for k in SHARD_FLAGS:
                out[k] += pc.sum(batch[k].cast(pa.int64())).as_py() or 0
    return out


def collect(root: str, seed: int = 0, depth_rows: int = DEPTH_ROWS, batch_rows: int = BATCH_ROWS) -> RunStats:
    """Funnel and statistics of the run under ``root``; stages absent from it are left out."""
    root = store.normalize(root)
    present = stages_present(root)
    schemas = {s: stage_columns(root, s) for s in present}
    feeds: dict[str, list[Acc]] = {s: [] for s in present}
    for acc in make_accumulators():
        column = acc.columns[0]
        if isinstance(acc, SearchAcc) and owner(schemas, "query") is None:
            column = "hashtags"
        if (s := owner(schemas, column)) is not None:
            feeds[s].append(acc)
    funnel, stats, texts, models = [], [], [], Counter()
    for s in present:
        f, m = scan_stage(root, s, feeds[s], batch_rows)
        funnel.append(f)
        models.update(m)
        source = f"{s}: {f.counts[OK]} ok rows"
        for acc in feeds[s]:
            if isinstance(acc, TextAcc):
                texts.append((acc, source))
            elif (st := acc.result(source)) is not None:
                stats.append(st)
    texts.sort(key=lambda x: TEXT_FIELDS.index(x[0].name))
    if (st := text_lengths(texts)) is not None:
        stats.append(st)
    if (s := owner(schemas, "depth")) is not None:
        acc = depth_sample(root, s, depth_rows, seed)
        if (st := acc.result(f"{s}: {acc.rows} sampled ok rows")) is not None:
            stats.append(st)
    if models:
        rows = [[stage, model, n] for (stage, model), n in sorted(models.items())]
        stats.append(
            Stat(
                "models",
                "Models",
                "the {stage}_model column of each model stage's ok rows",
                ["stage", "model", "rows"],
                rows,
            )
        )
    stats.sort(key=lambda st: STAT_ORDER.index(st.key) if st.key in STAT_ORDER else len(STAT_ORDER))
    curation = collect_curation(root, present, schemas, batch_rows)
    return RunStats(root, funnel, stats, shard_totals(root) if "shard" in present else None, curation)
