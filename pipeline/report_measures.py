"""What each statistic of the run report measures: one accumulator per statistic, fed batches of ok rows.

An accumulator keeps only fixed-size state (histograms, running sums) or a capped counter of
distinct values, so a statistic over ten million rows costs what it costs over a thousand.
``pipeline.report_stats`` decides which stage's manifest feeds each one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contracts.encodings import decode_depth_png
from contracts.shard_format import DEPTH_MAX_MM

COUNTER_CAP = 20_000  # distinct keys a counter keeps before pruning its rarer half
TOP = 12  # rows shown by a table of values
# VIDAL's duration grades, by whole seconds: a 7.9 s clip is in 1–7 s.
DURATION_GRADES = (
    ("under 1 s", 0, 1),
    ("1–7 s", 1, 8),
    ("8–14 s", 8, 15),
    ("15–20 s", 15, 21),
    ("21 s and over", 21, None),
)
NAMED_RATIOS = (
    ("16:9", 16 / 9),
    ("9:16", 9 / 16),
    ("4:3", 4 / 3),
    ("3:4", 3 / 4),
    ("1:1", 1.0),
    ("3:2", 3 / 2),
    ("2:3", 2 / 3),
    ("21:9", 21 / 9),
)
TEXT_FIELDS = ("title", "raw", "ofa", "mplug", "polish_mplug", "sound_mplug", "asr")


@dataclass
class Stat:
    """One statistic: a table (the first cell of each row is its label) and what to plot."""

    key: str
    title: str
    source: str
    headers: list[str]
    rows: list[list[Any]]
    plot: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


class BoundedCounter:
    """Counts keys, keeping at most ``cap`` of them: past that the rarer half is dropped (``pruned``)."""

    def __init__(self, cap: int = COUNTER_CAP):
        self.counts: Counter[Any] = Counter()
        self.cap, self.total, self.pruned = cap, 0, False

    def add(self, key: Any, n: int = 1) -> None:
        self.counts[key] += n
        self.total += n
        if len(self.counts) > self.cap:
            self.counts = Counter(dict(self.counts.most_common(self.cap // 2)))
            self.pruned = True

    def add_array(self, values: pa.Array) -> None:
        """Count the values of an Arrow array (nulls included) with one ``value_counts`` call."""
        for item in pc.value_counts(values).to_pylist():
            self.add(item["values"], item["counts"])

    def table(self, top: int = TOP) -> list[list[Any]]:
        """Rows of (key, count, share) for the most common keys, then one ``other`` row for the rest."""
        rows = [[k, n, n / self.total] for k, n in self.counts.most_common(top)]
        rest = self.total - sum(r[1] for r in rows)
        return rows + ([["other", rest, rest / self.total]] if rest else [])


class Histogram:
    """Count, sum, min, max and fixed-bin counts of a stream of numbers (the top bin takes overflow)."""

    def __init__(self, edges: list[float]):
        self.edges = np.asarray(edges, float)
        self.hist = np.zeros(len(edges) - 1, np.int64)
        self.n, self.sum, self.lo, self.hi = 0, 0.0, float("inf"), float("-inf")

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values, float)
        v = v[np.isfinite(v)]
        if not len(v):
            return
        self.n += len(v)
        self.sum += float(v.sum())
        self.lo, self.hi = min(self.lo, float(v.min())), max(self.hi, float(v.max()))
        self.hist += np.histogram(np.clip(v, self.edges[0], self.edges[-1]), self.edges)[0]

    def summary_rows(self, unit: str) -> list[list[Any]]:
        return [
            [f"mean ({unit})", self.sum / self.n, None],
            [f"min ({unit})", self.lo, None],
            [f"max ({unit})", self.hi, None],
        ]


def duration_grade(seconds: float) -> str:
    """VIDAL's grade of a duration by whole seconds (1–7, 8–14, 15–20 s, or outside them)."""
    whole = int(seconds)
    return next(g for g, lo, hi in DURATION_GRADES if whole >= lo and (hi is None or whole < hi))


def aspect_name(width: int, height: int) -> str:
    """The nearest common aspect ratio within 3 %, else 'other landscape' / 'other portrait'."""
    r = width / height
    name, ref = min(NAMED_RATIOS, key=lambda x: abs(x[1] - r) / x[1])
    if abs(ref - r) / ref <= 0.03:
        return name
    return "other landscape" if r > 1 else "other portrait"


def word_count(text: str | None) -> int:
    """Words as whitespace-separated tokens (a rough measure for languages written without spaces)."""
    return len(text.split()) if text else 0


class Acc:
    """A statistic under construction; ``columns[0]`` decides which stage feeds it."""

    columns: tuple[str, ...] = ()

    def feed(self, batch: pa.RecordBatch) -> None:
        raise NotImplementedError

    def result(self, source: str) -> Stat | None:
        raise NotImplementedError


class DurationAcc(Acc):
    columns = ("duration",)

    def __init__(self) -> None:
        self.h = Histogram(list(range(0, 31)))
        self.grades: Counter[str] = Counter()

    def feed(self, batch: pa.RecordBatch) -> None:
        v = batch["duration"].to_numpy(zero_copy_only=False).astype(float)
        v = v[np.isfinite(v)]
        self.h.add(v)
        for (g, _, _), n in zip(DURATION_GRADES, np.histogram(np.floor(v), [0, 1, 8, 15, 21, np.inf])[0]):
            self.grades[g] += int(n)

    def result(self, source: str) -> Stat | None:
        if not self.h.n:
            return None
        rows = [[g, self.grades[g], self.grades[g] / self.h.n] for g, _, _ in DURATION_GRADES]
        rows += [["videos", self.h.n, None], *self.h.summary_rows("s")]
        plot = {
            "kind": "hist",
            "edges": self.h.edges.tolist(),
            "series": {"videos": self.h.hist.tolist()},
            "xlabel": "duration (s); last bar: 30 s and over",
            "bands": [1, 8, 15, 21],
        }
        return Stat("duration", "Duration", source, ["grade", "videos", "share"], rows, plot)


class CountAcc(Acc):
    """A table of the values of a key computed per row from a few columns (``None`` when a column is null)."""

    def __init__(
        self,
        key: str,
        title: str,
        columns: tuple[str, ...],
        header: str,
        key_of: Callable[..., Any] | None = None,
    ):
        self.key, self.title, self.columns, self.header = key, title, columns, header
        self.key_of = key_of
        self.counter = BoundedCounter()

    def feed(self, batch: pa.RecordBatch) -> None:
        if self.key_of is None:
            self.counter.add_array(batch[self.columns[0]])
            return
        names = batch.schema.names
        columns = [batch[c].to_pylist() if c in names else [None] * batch.num_rows for c in self.columns]
        for values in zip(*columns):
            self.counter.add(self.key_of(*values) if all(v is not None for v in values) else None)

    def result(self, source: str) -> Stat | None:
        if not self.counter.total:
            return None
        rows = [["(none)" if r[0] is None else str(r[0]), *r[1:]] for r in self.counter.table()]
        shown = [r for r in rows if r[0] != "other"]
        plot = {
            "kind": "bar",
            "labels": [r[0] for r in shown],
            "values": [r[1] for r in shown],
            "xlabel": "videos",
        }
        notes = (
            ["distinct values beyond the counter's cap were pruned: counts are lower bounds"]
            if self.counter.pruned
            else []
        )
        return Stat(self.key, self.title, source, [self.header, "videos", "share"], rows, plot, notes)


class SearchAcc(CountAcc):
    """Search terms (discover's ``query``) when any row has one, else hashtags (one count per video)."""

    def __init__(self) -> None:
        super().__init__("search", "Search terms", ("query", "hashtags"), "search term")
        self.tags = BoundedCounter()

    def feed(self, batch: pa.RecordBatch) -> None:
        if "query" in batch.schema.names:
            self.counter.add_array(pc.drop_null(batch["query"]))
        if "hashtags" in batch.schema.names:
            self.tags.add_array(pc.list_flatten(batch["hashtags"]))

    def result(self, source: str) -> Stat | None:
        if not self.counter.total:
            self.counter, self.header, self.title = (
                self.tags,
                "hashtag",
                "Hashtags (no search terms recorded)",
            )
        return super().result(source)


class TextAcc(Acc):
    """Lengths of a text field in words; a list field (``ofa``) counts each of its texts."""

    def __init__(self, name: str):
        self.name = name
        self.columns = ("title", "hashtags", "raw") if name == "raw" else (name,)
        self.words = Histogram(list(range(0, 82, 2)))
        self.chars = self.empty = 0

    def texts(self, batch: pa.RecordBatch) -> list[str | None]:
        if self.name == "raw":
            from contracts.shard_format import raw_text  # the shard writer's definition of raw

            return [
                raw_text(r)
                for r in batch.select([c for c in self.columns if c in batch.schema.names]).to_pylist()
            ]
        col = batch[self.name]
        return pc.list_flatten(col).to_pylist() if pa.types.is_list(col.type) else col.to_pylist()

    def feed(self, batch: pa.RecordBatch) -> None:
        texts = [t for t in self.texts(batch)]
        kept = [t for t in texts if t and t.strip()]
        self.empty += len(texts) - len(kept)
        self.chars += sum(len(t) for t in kept)
        self.words.add(np.array([word_count(t) for t in kept], float))


def text_lengths(accs: list[tuple[TextAcc, str]]) -> Stat | None:
    """One table for all text fields: texts, empty ones, words (mean/min/max) and mean characters."""
    rows, series = [], {}
    for acc, source in accs:
        h = acc.words
        if h.n:
            rows.append([acc.name, h.n, acc.empty, h.sum / h.n, h.lo, h.hi, acc.chars / h.n, source])
            series[acc.name] = h.hist.tolist()
        elif acc.empty:
            rows.append([acc.name, 0, acc.empty, None, None, None, None, source])
    if not rows:
        return None
    plot = {
        "kind": "lines",
        "edges": accs[0][0].words.edges.tolist(),
        "series": series,
        "xlabel": "words per text (bins of 2; last: 80+)",
    }
    return Stat(
        "text",
        "Text lengths",
        "the stage that writes each field (see 'from')",
        ["field", "texts", "empty", "mean words", "min words", "max words", "mean chars", "from"],
        rows,
        plot,
        ["ofa counts each per-frame caption as one text; empty: null or blank"],
    )


class DepthAcc(Acc):
    """Pixel statistics of depth maps (uint16 PNG, millimetres; 0 is no depth) over sampled rows."""

    columns = ("depth",)

    def __init__(self) -> None:
        self.metres = Histogram([i / 5 for i in range(51)])  # 0.2 m bins up to the 10 m clip
        self.rows = self.frames = self.invalid = self.clipped = self.unreadable = 0

    def add_frames(self, frames: list[bytes] | None) -> None:
        self.rows += 1
        for data in frames or []:
            self.frames += 1
            try:
                mm = decode_depth_png(data).astype(np.int64)
            except ValueError:  # a broken PNG is counted, not fatal to the report
                self.unreadable += 1
                continue
            valid = mm[mm > 0]
            self.invalid += mm.size - valid.size
            self.clipped += int((valid >= DEPTH_MAX_MM).sum())
            self.metres.add(valid / 1000.0)

    def result(self, source: str) -> Stat | None:
        h = self.metres
        if not h.n:
            return None
        pixels = h.n + self.invalid
        rows = [
            ["rows sampled", self.rows, None],
            ["frames", self.frames, None],
            ["unreadable frames", self.unreadable, None],
            ["valid pixels", h.n, h.n / pixels],
            ["pixels without depth (0)", self.invalid, self.invalid / pixels],
            [f"valid pixels at the {DEPTH_MAX_MM / 1000:g} m clip", self.clipped, self.clipped / h.n],
            *h.summary_rows("m"),
        ]
        plot = {
            "kind": "hist",
            "edges": h.edges.tolist(),
            "series": {"pixels": h.hist.tolist()},
            "xlabel": "depth of valid pixels (m)",
        }
        return Stat("depth", "Depth range", source, ["", "value", "share"], rows, plot)


def _ratio(w: int, h: int) -> str:
    return aspect_name(w, h) if w > 0 and h > 0 else "(none)"


def make_accumulators() -> list[Acc]:
    """Every statistic the report knows, in the order it shows them (depth is sampled separately)."""
    return [
        DurationAcc(),
        CountAcc("resolution", "Resolution", ("width", "height"), "width × height", lambda w, h: f"{w}×{h}"),
        CountAcc("fps", "Frame rate", ("fps",), "fps", lambda v: f"{round(v, 2):g}"),
        CountAcc("aspect", "Aspect ratio (nearest within 3 %)", ("width", "height"), "aspect", _ratio),
        CountAcc("audio", "Audio", ("has_audio",), "audio", lambda v: "with audio" if v else "without audio"),
        CountAcc("asr_language", "ASR language", ("asr_language",), "language"),
        SearchAcc(),
        *[TextAcc(f) for f in TEXT_FIELDS],
        CountAcc("depth_kind", "Depth kind", ("depth_kind",), "kind"),
    ]
