"""What a stage reads: the ok rows of its upstream stages' manifests, joined on ``video_id``, with only
the columns it uses, as a streaming Ray Data dataset.

Each manifest part is read by one task. The upstream with the heaviest columns (frames, depth maps) is
streamed; when the other upstreams' columns fit in ``run.broadcast_join_mb`` they are put in the object
store once and looked up block by block (no shuffle, so the first rows reach the stage at once);
larger ones go through Ray Data's hash join.

With ``clip`` in ``run.stages``, a stage after it reads clip rows: ``clip`` takes the place of ``probe``
(its rows carry probe's columns, per clip), and the stages before clip (discover, download), whose rows
are the parent videos, are joined on the clip's ``parent_id`` instead of ``video_id``; the clip's own id
stays the row's ``video_id`` (see ``clip_plan``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from pydantic import BaseModel

from contracts import manifest, store
from contracts.manifest import StageInputError
from contracts.status import OK
from stages import STAGE_ORDER
from stages.base import Stage

__all__ = ["StageInputError", "UpstreamInput", "cached", "clip_plan", "upstream_input"]

CLIP = "clip"
PARENT_KEY = "parent_id"


class UpstreamInput(NamedTuple):
    """A stage's input plan, the rows it will hold, and their ids (or a superset of them), read on the
    driver already; the runner compares them with the stage's done ids before starting the plan."""

    ds: ray.data.Dataset | None
    expected: int
    ids: pa.Array


_NO_INPUT = UpstreamInput(None, 0, pa.array([], pa.string()))

# Per worker process: values built from object-store refs (see ``cached``).
_LOOKUPS: dict[str, tuple[pa.Table, dict[str, int]]] = {}


def cached(cache: dict[str, Any], refs: list[Any], build: Callable[[Any], Any]) -> list[Any]:
    """``build(ray.get(ref))`` for each ref, once per worker process; entries for other refs (an earlier
    stage's) are dropped, so a long-lived worker keeps only what the current stage uses."""
    keys = [ref.hex() for ref in refs]
    for stale in [k for k in cache if k not in keys]:
        del cache[stale]
    for ref, key in zip(refs, keys):
        if key not in cache:
            cache[key] = build(ray.get(ref))
    return [cache[k] for k in keys]


def _indexed(table: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    return table, {v: i for i, v in enumerate(table["video_id"].to_pylist())}


def upstream_input(cls: type[Stage], config: BaseModel, root: str) -> UpstreamInput:
    """The ok rows of the stage's upstream stages joined on video_id, with only the needed columns."""
    present = [s for s in (*cls.upstream, *cls.optional_upstream, CLIP) if manifest.has_output(root, s)]
    required, optional = cls.plan_upstream(config, present)
    required, optional, by_parent = clip_plan(
        cls.name, config.run.stages, required, optional, CLIP in present
    )
    missing = [s for s in required if s not in present]
    if missing:
        raise StageInputError(
            f"stage {cls.name!r} needs the output of {missing} under {root}; "
            f"run `--until {cls.name}` or `--stage {missing[0]}` first"
        )
    if any(not manifest.part_files(root, s) for s in required):
        return _NO_INPUT  # a required upstream completed with no rows: this stage runs on nothing
    # A column present in several upstreams is taken from the latest stage in pipeline order
    # (probe's measured duration over discover's claimed one, captions over imported ones).
    owner: dict[str, str] = {}
    for up in sorted([*required, *optional], key=STAGE_ORDER.index):
        schema = manifest.read_schema(root, up)
        for c in schema.names if schema is not None else []:
            if c not in ("video_id", "status", "error") and (cls.reads is None or c in cls.reads):
                owner[c] = up
    plan: list[tuple[str, list[str], str]] = []
    for up in [*required, *optional]:
        wanted = [c for c, o in owner.items() if o == up]
        if up == CLIP and by_parent and PARENT_KEY not in wanted:
            wanted.append(PARENT_KEY)  # the key of the parent joins; dropped again unless the stage reads it
        if wanted or up in required:
            plan.append((up, wanted, "inner" if up in required else "left_outer"))
    if by_parent:  # after the clip-keyed ones, so that the rows being joined already hold parent_id
        plan.sort(key=lambda p: p[0] in by_parent)
    drop = [PARENT_KEY] if by_parent and cls.reads is not None and PARENT_KEY not in cls.reads else []
    if len(plan) > 1 and config.run.broadcast_join_mb > 0:
        joined = _broadcast_join(root, plan, config.run.broadcast_join_mb * 2**20, by_parent, drop)
        if joined is not None:
            return joined
    first_ids = manifest.read_columns(root, plan[0][0], ["video_id"], status=OK)["video_id"].combine_chunks()
    n_rows = len(first_ids)
    if n_rows == 0:
        return _NO_INPUT
    for up, _, _ in plan[1:]:
        manifest.check_readable(root, up)  # before any work (and before --force deletes anything)
    ds = None
    for up, cols, how in plan:
        part = _read_ok(root, up, cols)
        key = "video_id"
        if up in by_parent:
            part, key = part.rename_columns({"video_id": PARENT_KEY}), PARENT_KEY
        ds = (
            part
            if ds is None
            else ds.join(part, join_type=how, on=(key,), num_partitions=max(1, min(16, n_rows // 5000 + 1)))
        )
    if drop:
        ds = ds.drop_columns(drop)
    return UpstreamInput(ds, n_rows, first_ids)


def clip_plan(
    stage: str, run_stages: list[str], required: list[str], optional: list[str], clip_present: bool
) -> tuple[list[str], list[str], frozenset[str]]:
    """(required, optional, joined by parent) for a stage: with ``clip`` in ``run.stages`` and its
    output under the root, a stage after it reads ``clip`` where it would read ``probe``, and the
    upstream stages before ``clip`` (their rows are whole videos) are joined on ``parent_id``. A stage
    that reads such a stage but neither probe nor clip (enhance on captions) gets ``clip`` as a required
    upstream for the key. A root where clip has not run reads probe, as VIDAL's recipe does."""
    order = STAGE_ORDER.index
    if CLIP not in run_stages or not clip_present or order(stage) <= order(CLIP):
        return required, optional, frozenset()
    required = list(dict.fromkeys(CLIP if s == "probe" else s for s in required))
    optional = [s for s in dict.fromkeys(CLIP if s == "probe" else s for s in optional) if s not in required]
    by_parent = frozenset(s for s in (*required, *optional) if order(s) < order(CLIP))
    if by_parent and CLIP not in required:
        optional = [s for s in optional if s != CLIP]
        required = [CLIP, *required]
    return required, optional, by_parent


def _estimated_bytes(root: str, stage: str, columns: list[str], rows: int) -> float:
    """Uncompressed bytes of ``columns`` over ``rows`` rows, from the footers of a few parts."""
    if not columns:
        return 0.0
    sampled_bytes = sampled_rows = 0
    for uri in manifest.part_files(root, stage)[:4]:
        fs, path = store.resolve(uri)
        with fs.open_input_file(path) as f:
            meta = pq.ParquetFile(f).metadata
        sampled_rows += meta.num_rows
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(group.num_columns):
                chunk = group.column(c)
                if chunk.path_in_schema.split(".")[0] in columns:
                    sampled_bytes += chunk.total_uncompressed_size
    return sampled_bytes / max(1, sampled_rows) * rows


def _broadcast_join(
    root: str,
    plan: list[tuple[str, list[str], str]],
    limit_bytes: float,
    by_parent: frozenset[str] = frozenset(),
    drop: list[str] | None = None,
) -> UpstreamInput | None:
    """Stream the upstream with the heaviest columns and look the others up in tables held in the object
    store; no shuffle, so the first rows reach the stage at once. None when the others are too big.
    The stages in ``by_parent`` are looked up by the streamed row's ``parent_id``."""
    oks = {
        up: manifest.read_columns(root, up, ["video_id"], status=OK)["video_id"].combine_chunks()
        for up, _, _ in plan
    }
    sizes = {up: _estimated_bytes(root, up, cols, len(oks[up])) for up, cols, _ in plan}
    streamable = [p for p in plan if p[2] == "inner" and p[0] not in by_parent]
    stream, stream_cols, _ = max(streamable, key=lambda p: sizes[p[0]])
    side = [p for p in plan if p[0] != stream]
    if sum(sizes[up] for up, _, _ in side) > limit_bytes:
        return None
    # Arrow arrays, not Python sets: at 10M ids a set of str costs ~1 GB on the driver, the array ~0.3 GB
    ids = pc.unique(oks[stream])
    parents = _parents(root, plan, by_parent)
    for up, _, how in side:
        if how == "inner" and up in by_parent:
            keys = (
                ids
                if parents is None
                else pc.coalesce(pc.take(parents[1], pc.index_in(ids, parents[0])), ids)
            )
            ids = ids.filter(pc.is_in(keys, value_set=oks[up]))
        elif how == "inner":
            ids = ids.filter(pc.is_in(ids, value_set=oks[up]))
    if not len(ids):
        return _NO_INPUT
    lookups = [
        (
            ray.put(manifest.read_columns(root, up, ["video_id", *cols], status=OK)),
            how,
            PARENT_KEY if up in by_parent else "video_id",
        )
        for up, cols, how in side
    ]
    ds = _read_ok(root, stream, stream_cols)
    ds = ds.map_batches(
        _lookup_join,
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs={"lookups": lookups, "drop": drop or []},
    )
    return UpstreamInput(ds, len(ids), ids.cast(pa.string()))


def _parents(
    root: str, plan: list[tuple[str, list[str], str]], by_parent: frozenset[str]
) -> tuple[pa.Array, pa.Array] | None:
    """(clip ids, their parent ids), read on the driver when an inner join by parent has to count the rows."""
    if not any(up in by_parent and how == "inner" for up, _, how in plan):
        return None
    t = manifest.read_columns(root, CLIP, ["video_id", PARENT_KEY], status=OK).combine_chunks()
    return t["video_id"].combine_chunks(), t[PARENT_KEY].combine_chunks()


def _read_ok(root: str, stage: str, columns: list[str]) -> ray.data.Dataset:
    """The ok rows of a stage's manifest, ``video_id`` and ``columns``, one read task per part. (Ray
    Data's own Parquet reader first indexes every file's footer in an actor, which held 1.6 GB at the
    peak of a 10,000-video run; the manifest's parts are already the right unit of work.)"""
    parts = [{"uri": uri} for uri in manifest.part_files(root, stage)]
    ds = ray.data.from_items(parts, override_num_blocks=len(parts))
    return ds.map_batches(
        _read_ok_rows, batch_size=1, batch_format="pyarrow", fn_kwargs={"columns": ["video_id", *columns]}
    )


def _read_ok_rows(items: pa.Table, columns: list[str]) -> Iterator[pa.Table]:
    for uri in items["uri"].to_pylist():
        yield manifest.read_part(uri, columns, status=OK)


def _lookup_join(batch: pa.Table, lookups: list[tuple[Any, ...]], drop: list[str] = ()) -> pa.Table:
    """Join a streamed block with broadcast upstream tables, each ``(ref, how[, key])``: inner or left
    outer, on the block's ``video_id``, or with key ``parent_id`` on that column, for a table of parent
    videos (a row that was not split is its own parent)."""
    indexed = cached(_LOOKUPS, [spec[0] for spec in lookups], _indexed)
    for (table, index), (_, how, *key) in zip(indexed, lookups):
        by = key[0] if key else "video_id"
        keys = batch["video_id"] if by == "video_id" else pc.coalesce(batch[by], batch["video_id"])
        rows = pa.array([index.get(v) for v in keys.to_pylist()], pa.int64())
        if how == "inner":
            keep = rows.is_valid()
            batch, rows = batch.filter(keep), rows.filter(keep)
        found = table.drop_columns(["video_id"]).take(rows)  # a null index gives a null row (left outer)
        for name in found.column_names:
            batch = batch.append_column(table.schema.field(name), found[name])
    return batch.drop_columns([c for c in drop if c in batch.column_names])
