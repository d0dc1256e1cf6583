"""Score stage: how well each clip matches its own texts, and which clips are near-duplicates of others.

Per row (on the model stages' workers: an actor pool with a GPU, reused task processes without): the clip's embedding from ``score.model`` (the
video tower over its frames; for ``hf:`` CLIP, the mean of its per-frame image embeddings) and the
cosine similarity with each text field in ``score.fields``: ``raw`` (the source's title), ``mplug``,
``polish_mplug``, and ``ofa``, whose 8 per-frame captions are embedded one by one and averaged (then
normalised again) into one text embedding, scored against the clip's embedding (a per-frame caption
describes one frame, but the mean keeps one score per field whatever the model). Columns
``score_<field>``; a field without text in a row scores null. A row whose ``score.filter_field``
scores below ``score.min_similarity`` is ``filtered`` here, with its score in the reason.

Run-wide rules need every row first, so they run on the driver at the stage's end (``after_plan``, which
the runner calls after the plan, after a killed run's rerun, and on a rerun with nothing left to do):

- ``score.keep_percentile``: rows whose filter score is below that percentile of the run's scores are
  filtered (the percentile over every row the per-row rules kept, not per batch);
- ``score.dedup``: near-duplicates across the run (``stages.near_dup``: LSH buckets through Ray, each
  compared exactly); the one kept is the longest, then the smallest ``video_id``, and the others are
  filtered naming it. What is compared is ``score.dedup_embedding``: ``model``, the clip embedding
  above (alike when two clips show the same thing), or ``frames``, a pixel signature of the clip's
  frames (``stages.backends.frame_signature``: alike when one is a re-encoded, resized or trimmed copy
  of the other; the demo's, whose random model cannot tell clips apart).

The embeddings stay in this stage's manifest (``clip_embedding``, and ``frame_signature`` when chosen:
float16 bytes, little-endian), so the pass reads them part by part and never needs them all in one
process. Rows scored before ``dedup_embedding: frames`` was set have no signature and are not compared. The pass is recomputed from the
manifest every time (rows it filtered before are first taken back), so its result is the same whatever
was killed, resumed or added: which rows it filters is marked in ``score_rule``.
"""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field, field_validator, model_validator

from contracts import backends, store
from contracts.shard_format import raw_text
from contracts.status import FAILED, FILTERED, OK
from stages.backends.batching import BatchRunner, ItemError
from stages.backends.frame_signature import frame_signature
from stages.base import ModelStageConfig, Stage, model_name
from stages.near_dup import LshParams, auto_lsh, choose_kept, find_pairs, read_part_embeddings

log = logging.getLogger("vidal")

TEXT_FIELDS = ("raw", "mplug", "polish_mplug", "ofa")
RULE_MIN = "min_similarity"
RULE_PERCENTILE = "percentile"
RULE_NEAR_DUP = "near_dup"
RUN_WIDE_RULES = (RULE_PERCENTILE, RULE_NEAR_DUP)
EMBEDDING = "clip_embedding"
SIGNATURE = "frame_signature"
DEDUP_COLUMNS = {"model": EMBEDDING, "frames": SIGNATURE}
LENGTH = "dedup_length"


class ScoreConfig(ModelStageConfig):
    batch_size: int = 32
    model: str = Field(
        "languagebind:LanguageBind/LanguageBind_Video_FT",
        description="languagebind:<hub id or dir>, vidal:<export dir>, hf:<CLIP id or dir>, or tiny",
    )
    fields: list[Literal["raw", "mplug", "polish_mplug", "ofa"]] = Field(
        default_factory=lambda: list(TEXT_FIELDS), description="text fields scored (score_<field> columns)"
    )
    filter_field: Literal["raw", "mplug", "polish_mplug", "ofa"] = Field(
        "mplug", description="the field whose score the thresholds apply to"
    )
    min_similarity: float | None = Field(
        None, ge=-1, le=1, description="rows scoring below are filtered (null: no threshold)"
    )
    keep_percentile: float | None = Field(
        None, gt=0, le=100, description="keep the run's best N percent by score (null: all)"
    )
    dedup: bool = Field(True, description="filter near-duplicate clips across the run")
    dedup_embedding: Literal["model", "frames"] = Field(
        "model", description="what dedup compares: the model's clip embedding, or a frame signature"
    )
    dedup_threshold: float = Field(
        0.95, gt=0, le=1, description="cosine at or above which clips are duplicates (frames: 0.92)"
    )
    dedup_tables: int | Literal["auto"] = Field(
        "auto", description="LSH tables (auto: from the rows, recall >= 0.98 at the threshold)"
    )
    dedup_bits: int | Literal["auto"] = Field(
        "auto", description="hyperplanes per table (auto: about log2(rows) - 3)"
    )
    dedup_tables_per_round: int = Field(
        4, ge=1, description="tables shuffled at once (copies of the embeddings)"
    )
    dedup_rows_per_partition: int = Field(200_000, ge=1000, description="rows one comparing task holds")
    model_batch: int = Field(32, ge=1, description="clips per forward pass (halved on CUDA out-of-memory)")

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        return model_name("alignment", v)

    @field_validator("dedup_tables", "dedup_bits")
    @classmethod
    def _lsh_range(cls, v: int | str, info: Any) -> int | str:
        top = 255 if info.field_name == "dedup_tables" else 56
        if isinstance(v, int) and not 1 <= v <= top:
            raise ValueError(f"must be auto or an integer in 1..{top}")
        return v

    @model_validator(mode="after")
    def _filter_field_scored(self) -> ScoreConfig:
        if self.filter_field not in self.fields:
            raise ValueError(f"filter_field {self.filter_field!r} is not among fields {self.fields}")
        return self

    def lsh(self, rows: int) -> LshParams:
        """The LSH parameters for a pass over ``rows`` embeddings (``auto`` ones from ``near_dup.auto_lsh``)."""
        tables, bits = auto_lsh(rows, self.dedup_threshold, self.dedup_tables, self.dedup_bits)
        return LshParams(
            threshold=self.dedup_threshold,
            tables=tables,
            bits=bits,
            tables_per_round=self.dedup_tables_per_round,
            rows_per_partition=self.dedup_rows_per_partition,
        )


def row_texts(row: dict[str, Any], field: str) -> list[str]:
    """The texts of one field of a row (``ofa``: its non-empty per-frame captions)."""
    value = raw_text(row) if field == "raw" else row.get(field)  # raw: as the shard JSON has it
    items = value if isinstance(value, list) else [value]
    return [t.strip() for t in items if isinstance(t, str) and t.strip()]


def encode_embedding(v: torch.Tensor) -> bytes:
    return v.to(torch.float16).numpy().astype("<f2").tobytes()


class ScoreStage(Stage):
    name = "score"
    upstream = ("probe",)
    optional_upstream = ("discover", "caption", "enhance")
    reads = ("video_id", "frames", "duration", "title", "hashtags", *TEXT_FIELDS)
    uses_model = True
    Config = ScoreConfig
    schema = pa.schema(
        [
            *[(f"score_{f}", pa.float32()) for f in TEXT_FIELDS],
            ("score_model", pa.string()),
            ("score_rule", pa.string()),  # the rule that filtered the row, null when kept
            (EMBEDDING, pa.binary()),  # float16 little-endian, the model's embedding size
            (SIGNATURE, pa.binary()),  # float16 LE, frame_signature.DIM: only with dedup_embedding frames
            (LENGTH, pa.float64()),  # seconds: the longest of a group of duplicates stays
        ]
    )
    config: ScoreConfig

    def __init__(self, config: ScoreConfig, context: Any):
        super().__init__(config, context)
        self._pass: dict[str, int] = {}

    def models(self) -> dict[str, str]:
        note = " (random weights: scores carry no meaning)" if self.config.model.startswith("tiny") else ""
        return {"score": self.config.model + note}

    def check(self) -> None:
        c = self.config
        if c.check_on_driver:
            backends.check("alignment", c.model, device=c.device, precision=c.precision)

    def setup(self) -> None:
        c = self.config
        self.device = backends.resolve_device(c.device)
        self.aligner = backends.load(
            "alignment", c.model, self.device, c.precision, model_batch=c.model_batch
        )
        self.runner = BatchRunner(c.model_batch, self.device, what="alignment model")
        log.info("score: %s on %s", c.model, self.device)

    def process(self, batch: pa.Table) -> pa.Table:
        c = self.config
        rows = batch.to_pylist()
        with_frames = [i for i, r in enumerate(rows) if r.get("frames")]
        embedded = self.runner.run(
            [rows[i]["frames"] for i in with_frames],
            lambda clips: list(self.aligner.embed_clips(clips)),
            key=len,  # clips of as many frames batch together
        )
        clip_emb: list[Any] = [None] * len(rows)
        for i, e in zip(with_frames, embedded):
            clip_emb[i] = e
        texts = sorted({t for r in rows for f in c.fields for t in row_texts(r, f)})
        text_emb = dict(zip(texts, self.aligner.embed_texts(texts))) if texts else {}
        out: list[dict[str, Any]] = []
        for row, emb in zip(rows, clip_emb):
            vid = row["video_id"]
            if not row.get("frames"):
                out.append({"video_id": vid, "status": FAILED, "error": "score: no frames to embed"})
                continue
            if isinstance(emb, ItemError):
                out.append({"video_id": vid, "status": FAILED, "error": f"score: {emb.reason}"})
                continue
            scores = {}
            for f in c.fields:
                ts = row_texts(row, f)
                if ts:
                    t = torch.nn.functional.normalize(torch.stack([text_emb[x] for x in ts]).mean(0), dim=0)
                    scores[f"score_{f}"] = round(float(emb @ t), 5)
            record = {
                "video_id": vid,
                "status": OK,
                "error": None,
                **scores,
                "score_model": c.model,
                EMBEDDING: encode_embedding(emb),
                LENGTH: row.get("duration"),
            }
            if c.dedup_embedding == "frames":
                try:
                    record[SIGNATURE] = frame_signature(row["frames"]).astype("<f2").tobytes()
                except (OSError, ValueError) as e:  # a frame PIL cannot decode
                    out.append({"video_id": vid, "status": FAILED, "error": f"score: frame signature: {e}"})
                    continue
            s = scores.get(f"score_{c.filter_field}")
            if c.min_similarity is not None and s is not None and s < c.min_similarity:
                record.update(
                    status=FILTERED,
                    score_rule=RULE_MIN,
                    error=f"score_{c.filter_field} {s:.4f} below score.min_similarity {c.min_similarity}",
                )
            out.append(record)
        return self.rows_to_table(out)

    # -- the run-wide pass, on the driver ------------------------------------------------------------
    def after_plan(self) -> None:
        self._pass = apply_run_wide_rules(self.context.root, self.name, self.config)
        log.info("[%s] run-wide rules: %s", self.name, self._pass)  # _SUCCESS.json has them (summary)

    def summary(self) -> dict[str, Any]:
        return {"run_wide": self._pass} if self._pass else {}


def _rewrite_part(
    root: str, stage: str, uri: str, status: np.ndarray, error: np.ndarray, rule: np.ndarray
) -> None:
    """The part with new status, error and rule columns, under a new name (then the old one removed: a kill
    between the two leaves two copies of its rows, which the next pass's ``manifest.dedupe`` folds)."""
    from contracts import manifest

    table = manifest.read_part(uri, manifest.read_schema(root, stage).names)
    for name, values in (("status", status), ("error", error), ("score_rule", rule)):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, table.schema.field(i), pa.array(list(values), pa.string()))
    store.write_parquet(manifest.new_part_uri(root, stage), table)
    store.remove(uri)


def apply_run_wide_rules(root: str, stage: str, c: ScoreConfig) -> dict[str, int]:
    """Percentile and near-duplicate rules over the whole manifest; rewrites only the parts whose rows change."""
    from contracts import manifest

    if not manifest.part_files(root, stage):
        return {}
    manifest.dedupe(root, stage)  # a pass killed between writing a part and removing its old copy
    parts = manifest.part_files(root, stage)
    score_col = f"score_{c.filter_field}"
    cols = ["video_id", "status", "error", "score_rule", score_col, LENGTH]
    tables = [manifest.read_part(uri, cols) for uri in parts]
    t = pa.concat_tables(tables)
    n = len(t)
    firsts = np.cumsum([0] + [len(x) for x in tables])
    status = np.array(t["status"].to_pylist(), dtype=object)
    error = np.array(t["error"].to_pylist(), dtype=object)
    rule = np.array(t["score_rule"].to_pylist(), dtype=object)
    retaken = np.isin(rule, RUN_WIDE_RULES)
    eligible = (status == OK) | retaken
    new_status, new_error, new_rule = status.copy(), error.copy(), rule.copy()
    new_status[retaken], new_error[retaken], new_rule[retaken] = OK, None, None
    counts = {"percentile_filtered": 0, "near_duplicates": 0}

    scores = t[score_col].to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> nan
    if c.keep_percentile is not None and c.keep_percentile < 100:
        scored = eligible & ~np.isnan(scores)
        if scored.any():
            ranked = np.sort(scores[scored])[::-1]  # the best ceil(N% of the rows) stay, ties at the cut too
            cut = float(ranked[max(1, math.ceil(len(ranked) * c.keep_percentile / 100)) - 1])
            low = scored & (scores < cut)
            new_status[low], new_rule[low] = FILTERED, RULE_PERCENTILE
            for i in np.flatnonzero(low):
                new_error[i] = (
                    f"{score_col} {scores[i]:.4f} below {cut:.4f}, the lowest score of the run's best "
                    f"{c.keep_percentile:g}% (score.keep_percentile {c.keep_percentile:g})"
                )
            counts["percentile_filtered"] = int(low.sum())

    if c.dedup:
        candidates = np.flatnonzero(new_status == OK)
        if len(candidates) > 1:
            readers, column = [], DEDUP_COLUMNS[c.dedup_embedding]
            for k, uri in enumerate(parts):
                mine = candidates[(candidates >= firsts[k]) & (candidates < firsts[k + 1])] - firsts[k]
                if len(mine):
                    readers.append(partial(read_part_embeddings, uri, column, mine, int(firsts[k])))
            lsh = c.lsh(len(candidates))
            a, b, sims = find_pairs(readers, len(candidates), lsh)
            ids = t["video_id"].to_pylist()
            lengths = t[LENGTH].to_numpy(zero_copy_only=False).astype(np.float64)
            dropped = choose_kept(a, b, sims, lambda i: (-np.nan_to_num(lengths[i], nan=0.0), ids[i]))
            for i, (kept, s) in dropped.items():
                new_status[i], new_rule[i] = FILTERED, RULE_NEAR_DUP
                what = "cosine" if c.dedup_embedding == "model" else "cosine of frame signatures"
                new_error[i] = (
                    f"near-duplicate of {ids[kept]} ({what} {s:.4f} >= score.dedup_threshold {c.dedup_threshold:g})"
                )
            counts["near_duplicates"] = len(dropped)
            counts["lsh_tables"], counts["lsh_bits"] = lsh.tables, lsh.bits

    for k, uri in enumerate(parts):
        lo, hi = firsts[k], firsts[k + 1]
        same = (
            (new_status[lo:hi] == status[lo:hi]).all()
            and (new_error[lo:hi] == error[lo:hi]).all()
            and (new_rule[lo:hi] == rule[lo:hi]).all()
        )
        if not same:
            _rewrite_part(root, stage, uri, new_status[lo:hi], new_error[lo:hi], new_rule[lo:hi])
    counts["rows"] = n
    return counts
