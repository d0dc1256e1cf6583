"""What a stage reads: the ok rows of its upstream stages' manifests, joined on ``video_id``, with only
the columns it uses, as a streaming Ray Data dataset.

Each manifest part is read by one task. The upstream with the heaviest columns (frames, depth maps) is
streamed; when the other upstreams' columns fit in ``run.broadcast_join_mb`` they are put in the object
store once and looked up block by block (no shuffle, so the first rows reach the stage at once);
larger ones go through Ray Data's hash join.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from pydantic import BaseModel

from contracts import manifest, store
from contracts.manifest import StageInputError
from contracts.status import OK
from stages import STAGE_ORDER
from stages.base import Stage

__all__ = ["StageInputError", "UpstreamInput", "cached", "upstream_input"]


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
    present = [s for s in cls.upstream + cls.optional_upstream if manifest.has_output(root, s)]
    required, optional = cls.plan_upstream(config, present)
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
        if wanted or up in required:
            plan.append((up, wanted, "inner" if up in required else "left_outer"))
    if len(plan) > 1 and config.run.broadcast_join_mb > 0:
        joined = _broadcast_join(root, plan, config.run.broadcast_join_mb * 2**20)
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
        ds = (
            part
            if ds is None
            else ds.join(
                part, join_type=how, on=("video_id",), num_partitions=max(1, min(16, n_rows // 5000 + 1))
            )
        )
    return UpstreamInput(ds, n_rows, first_ids)


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
    root: str, plan: list[tuple[str, list[str], str]], limit_bytes: float
) -> UpstreamInput | None:
    """Stream the upstream with the heaviest columns and look the others up in tables held in the object
    store; no shuffle, so the first rows reach the stage at once. None when the others are too big."""
    oks = {up: manifest.read_columns(root, up, ["video_id"], status=OK)["video_id"] for up, _, _ in plan}
    sizes = {up: _estimated_bytes(root, up, cols, len(oks[up])) for up, cols, _ in plan}
    stream, stream_cols, _ = max((p for p in plan if p[2] == "inner"), key=lambda p: sizes[p[0]])
    side = [p for p in plan if p[0] != stream]
    if sum(sizes[up] for up, _, _ in side) > limit_bytes:
        return None
    ids = set(oks[stream].to_pylist())
    for up, _, how in side:
        if how == "inner":
            ids &= set(oks[up].to_pylist())
    if not ids:
        return _NO_INPUT
    lookups = [
        (ray.put(manifest.read_columns(root, up, ["video_id", *cols], status=OK)), how)
        for up, cols, how in side
    ]
    ds = _read_ok(root, stream, stream_cols)
    ds = ds.map_batches(_lookup_join, batch_format="pyarrow", batch_size=None, fn_kwargs={"lookups": lookups})
    return UpstreamInput(ds, len(ids), pa.array(list(ids), pa.string()))


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


def _lookup_join(batch: pa.Table, lookups: list[tuple[Any, str]]) -> pa.Table:
    """Join a streamed block with broadcast upstream tables on video_id (inner or left outer)."""
    indexed = cached(_LOOKUPS, [ref for ref, _ in lookups], _indexed)
    for (table, index), (_, how) in zip(indexed, lookups):
        rows = pa.array([index.get(v) for v in batch["video_id"].to_pylist()], pa.int64())
        if how == "inner":
            keep = rows.is_valid()
            batch, rows = batch.filter(keep), rows.filter(keep)
        found = table.drop_columns(["video_id"]).take(rows)  # a null index gives a null row (left outer)
        for name in found.column_names:
            batch = batch.append_column(table.schema.field(name), found[name])
    return batch
