"""The stage interface: what every pipeline stage is, independent of how the runner executes it.

A stage is a small class. The runner (``pipeline.runner``) builds one instance per Ray actor or worker process,
calls ``setup()`` once and ``process(batch)`` per batch. ``process`` gets a ``pyarrow.Table`` with the
columns in ``reads`` (from the ``ok`` rows of the ``upstream`` stages joined on ``video_id``) and
returns a table with ``video_id``, ``status``, ``error`` and the columns of ``schema``. One bad row
becomes a row with ``status="failed"`` and a one-line ``error``; it never crashes the batch.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from contracts import backends
from contracts.status import FAILED, FILTERED, OK, STATUSES  # noqa: F401  (re-exported for the stages)

BASE_FIELDS = [
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
]


class StageConfig(BaseModel):
    """Settings every stage has; a stage's own ``Config`` subclasses this and adds its keys."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    batch_size: int = Field(16, ge=1, description="rows per call of process()")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per task or actor")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (fractions share a GPU)")
    actors: tuple[int, int] = Field(
        (1, 1),
        description="model stages: a GPU stage's actor pool (min, max); without a GPU, max bounds its tasks at once",
    )

    # Validators, not Field bounds, so that a subclass that changes a default keeps the check.
    @field_validator("batch_size")
    @classmethod
    def _positive_batch(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("num_gpus")
    @classmethod
    def _non_negative_gpus(cls, v: float) -> float:
        if v < 0:
            raise ValueError("must be >= 0")
        return v

    @field_validator("actors")
    @classmethod
    def _actor_range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1]:
            raise ValueError("must be (min, max) with 1 <= min <= max")
        return v


def model_name(kind: str, spec: str, *, allow_none: bool = False) -> str:
    """A config validator's body for a model key: ``spec`` as the backend registry parses it (family
    and variant known for ``kind``; no file is touched), or ``none`` where the stage allows it."""
    if allow_none and spec == "none":
        return spec
    try:
        backends.parse(kind, spec)
    except backends.ModelLoadError as e:
        raise ValueError(str(e)) from None  # pydantic reports ValueErrors with the dotted key
    return spec


class ModelStageConfig(StageConfig):
    """Settings every model stage has: where its model runs, in what precision, and the driver's check."""

    device: str = Field("auto", description="auto (CUDA when visible, else CPU), cpu, cuda, cuda:1")
    precision: str = Field("auto", description="auto (bf16/fp16 on CUDA, fp32 on CPU), bf16, fp16, fp32")
    check_on_driver: bool = Field(
        True,
        description="check the model files on the driver before actors "
        "start (turn off when only the workers can see them)",
    )

    @field_validator("device")
    @classmethod
    def _device_name(cls, v: str) -> str:
        return backends.check_device(v)

    @field_validator("precision")
    @classmethod
    def _precision_name(cls, v: str) -> str:
        return backends.check_precision(v)


@dataclass(frozen=True)
class Resources:
    """How the runner should schedule a stage: ``actors`` set for model stages (an actor pool when they ask
    for a GPU, else tasks at most ``actors[1]`` at a time, ``pipeline.workers``), None for I/O stages."""

    batch_size: int = 16
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    actors: tuple[int, int] | None = None  # None: stateless tasks


@dataclass(frozen=True)
class RunContext:
    """What a stage may know of the run: where it writes media and the run's identity."""

    root: str  # run root URI (local path or s3://…)
    stage_config_hash: str = ""
    run_token: str | None = None  # the root lock's token (contracts.lock); writers that publish check it


class Stage:
    """Base class of pipeline stages; see the module docstring for the contract."""

    name: ClassVar[str]
    upstream: ClassVar[tuple[str, ...]] = ()  # required: their ok rows are inner-joined
    optional_upstream: ClassVar[tuple[str, ...]] = ()  # left-joined when present in the run
    reads: ClassVar[tuple[str, ...] | None] = ("video_id",)  # None: every upstream column
    schema: ClassVar[pa.Schema] = pa.schema([])  # output columns besides video_id/status/error
    uses_model: ClassVar[bool] = False  # True: actors bound it (pool with a GPU); setup() once per process
    Config: ClassVar[type[StageConfig]] = StageConfig

    def __init__(self, config: StageConfig, context: RunContext):
        self.config = config
        self.context = context

    # -- what subclasses implement -------------------------------------------------------------
    def setup(self) -> None:
        """Load models or open clients; called once per actor or worker process before its first batch."""

    def process(self, batch: pa.Table) -> pa.Table:
        """Turn an input batch into output rows; by default one ``process_row`` call per row."""
        return self.rows_to_table(self.process_rows(batch.to_pylist()))

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Process one row; raise ``RowError`` (or any exception) to mark it failed."""
        raise NotImplementedError

    def models(self) -> dict[str, str]:
        """Model ids from config (no loading): recorded in ``_SUCCESS.json``."""
        return {}

    def check(self) -> None:
        """On the driver, before anything of the stage's output is deleted (``--force``) or any plan
        runs: fail now on what would fail every row (a missing or truncated model file)."""

    def prepare(self) -> None:
        """On the driver, before the stage's plan runs (e.g. start a coordinating actor)."""

    def finish(self) -> None:
        """On the driver, after the stage's plan ran (even when it failed)."""

    def summary(self) -> dict[str, Any]:
        """Extra totals for ``_SUCCESS.json``, computed on the driver after the run."""
        return {}

    def reconcile(self) -> dict[str, int]:
        """On the driver, at the start of the stage (before resume reads what is done) and at its end:
        make what the stage publishes beside its manifest (shards) agree with the manifest, after
        kills and retries. Returns counts of what it repaired; by default nothing to do."""
        return {}

    def after_plan(self) -> None:
        """On the driver, once the plan has run (or found nothing left to do), before the stage end's
        duplicate check and compaction: rules that need every row of the run rewrite its manifest here
        (score's percentile and near-duplicates); their counts go in ``summary()``. Must give the same
        result when repeated (a killed run's rerun calls it again). By default nothing."""

    @classmethod
    def plan_upstream(cls, config: Any, present: list[str]) -> tuple[list[str], list[str]]:
        """(required, optional) upstream stages for this run, given those with output under the root."""
        return list(cls.upstream), [s for s in cls.optional_upstream if s in present]

    # -- source stages (no upstream): the runner calls these instead of reading manifests ---------
    def plan_inputs(self) -> list[dict[str, Any]]:
        """Small descriptors of the inputs (one per file, term, ...), read in parallel by tasks."""
        raise NotImplementedError(f"stage {self.name} has no upstream and no inputs")

    def read_inputs(self, item: dict[str, Any]) -> Iterator[pa.Table]:
        """Candidate rows for one input descriptor, as tables of at most a few thousand rows."""
        raise NotImplementedError

    # -- helpers for subclasses ----------------------------------------------------------------
    def process_rows(self, rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Apply ``process_row`` to each row, turning exceptions into failed rows."""
        for row in rows:
            yield run_isolated(row["video_id"], lambda r=row: self.process_row(r))

    @classmethod
    def output_schema(cls) -> pa.Schema:
        """The full output schema: base fields then the stage's own columns."""
        return pa.schema(BASE_FIELDS + list(cls.schema))

    @classmethod
    def rows_to_table(cls, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
        """Build an output table in ``output_schema()``; missing columns become nulls."""
        schema = cls.output_schema()
        rows = list(rows)
        columns = {f.name: [r.get(f.name) for r in rows] for f in schema}
        return pa.Table.from_pydict(columns, schema=schema)

    def resources(self) -> Resources:
        """Scheduling from config: the actors bound when the stage loads a model, else free tasks."""
        c = self.config
        actors = tuple(c.actors) if self.uses_model else None
        return Resources(c.batch_size, c.num_cpus, c.num_gpus, actors)


class Results:
    """The output rows of one batch of a model stage, filled by index as results arrive.

    Every row starts ``ok``; ``set(i, **cols)`` records columns, ``fail(i, reason)`` fails the row
    (the first reason stays), ``filter(i, reason)`` drops it by a rule. ``table()`` builds the output
    in the stage's schema, and a failed row carries no partial columns: whatever was set before (or
    after) it failed is null in the table, except the ``accounting`` columns, which say what the
    attempt cost (tokens, requests) rather than what it produced.
    """

    def __init__(self, stage: type[Stage] | Stage, video_ids: list[str], accounting: tuple[str, ...] = ()):
        self.stage = stage
        self.columns = frozenset(f.name for f in stage.schema)
        self.kept = ("video_id", "status", "error", *accounting)
        self.rows: list[dict[str, Any]] = [{"video_id": v, "status": OK, "error": None} for v in video_ids]

    def __len__(self) -> int:
        return len(self.rows)

    def ok(self, i: int) -> bool:
        """True while row ``i`` has neither failed nor been filtered."""
        return self.rows[i]["status"] == OK

    def set(self, i: int, **columns: Any) -> None:
        """Columns of row ``i`` (names from the stage's schema)."""
        unknown = [k for k in columns if k not in self.columns]
        if unknown:
            raise KeyError(f"not output columns of this stage: {', '.join(unknown)}")
        self.rows[i].update(columns)

    def get(self, i: int, column: str) -> Any:
        """What row ``i`` holds in ``column`` so far (None when unset)."""
        return self.rows[i].get(column)

    def fail(self, i: int, reason: str) -> None:
        """Row ``i`` failed with a one-line reason; a row already failed keeps its first reason."""
        if self.rows[i]["status"] != FAILED:
            self.rows[i].update(status=FAILED, error=one_line(reason))

    def filter(self, i: int, reason: str) -> None:
        """Row ``i`` is dropped by a rule (``filtered``); its columns stay, to show why."""
        if self.ok(i):
            self.rows[i].update(status=FILTERED, error=one_line(reason))

    def table(self) -> pa.Table:
        """The rows in the stage's output schema; failed rows with only ``video_id``, ``status``, ``error``
        (and the accounting columns)."""
        return self.stage.rows_to_table(
            {k: r.get(k) for k in self.kept} if r["status"] == FAILED else r for r in self.rows
        )


class RowError(Exception):
    """A row-level failure with a reason meant for the manifest's ``error`` column."""

    def __init__(self, reason: str, status: str = FAILED):
        super().__init__(reason)
        self.status = status


class RowFiltered(RowError):
    """A row dropped by a rule (not a failure): ``status="filtered"`` with the rule as the reason."""

    def __init__(self, reason: str):
        super().__init__(reason, status=FILTERED)


def one_line(text: str, limit: int = 500) -> str:
    """Collapse an error message to one line of bounded length for the ``error`` column."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def run_isolated(video_id: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``fn`` for one row; a raised error becomes a failed (or filtered) row with its reason."""
    try:
        out = dict(fn())
        out.setdefault("video_id", video_id)
        out.setdefault("status", OK)
        out.setdefault("error", None)
        return out
    except RowError as e:
        return {"video_id": video_id, "status": e.status, "error": one_line(str(e))}
    except Exception as e:  # a bad row is data, not a crash
        where = traceback.extract_tb(e.__traceback__)[-1]
        reason = f"{type(e).__name__}: {e} (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})"
        return {"video_id": video_id, "status": FAILED, "error": one_line(reason)}
