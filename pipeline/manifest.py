"""Stage manifests: ``{root}/{stage}/part-*.parquet`` plus ``_SUCCESS.json`` when the stage completes.

Every row has ``video_id``, ``status`` (ok | failed | filtered) and ``error``. Resume reads only the
``video_id`` column; ``--retry-failed`` rewrites parts without their failed rows (each part
atomically), after which those ids are simply not done and a resumed run redoes them.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import store

PART_PREFIX, PART_SUFFIX = "part-", ".parquet"
SUCCESS = "_SUCCESS.json"


def stage_dir(root: str, stage: str) -> str:
    return store.join(root, stage)


def part_files(root: str, stage: str) -> list[str]:
    """The committed Parquet parts of a stage (temp files excluded), sorted."""
    return store.list_files(stage_dir(root, stage), prefix=PART_PREFIX, suffix=PART_SUFFIX)


def new_part_uri(root: str, stage: str) -> str:
    return store.join(stage_dir(root, stage), f"{PART_PREFIX}{uuid.uuid4().hex}{PART_SUFFIX}")


def has_output(root: str, stage: str) -> bool:
    return bool(part_files(root, stage))


def read_columns(root: str, stage: str, columns: list[str], status: str | None = None) -> pa.Table:
    """Read some columns of all parts of a stage on the driver (small columns only), optionally one status."""
    tables = []
    for uri in part_files(root, stage):
        fs, path = store.resolve(uri)
        cols = list(dict.fromkeys([*columns, *(["status"] if status else [])]))
        t = pq.read_table(path, filesystem=fs, columns=cols)
        if status:
            t = t.filter(pc.equal(t["status"], status))
        tables.append(t.select(columns))
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    return pa.concat_tables(tables, promote_options="permissive")


def read_schema(root: str, stage: str) -> pa.Schema | None:
    """The schema of a stage's manifest (from its first part), or None when it has no output."""
    parts = part_files(root, stage)
    if not parts:
        return None
    fs, path = store.resolve(parts[0])
    return pq.read_schema(path, filesystem=fs)


def done_ids(root: str, stage: str) -> pa.Array:
    """All video_ids a stage has already written (any status): the rows a resumed run skips."""
    return read_columns(root, stage, ["video_id"])["video_id"].combine_chunks()


def status_counts(root: str, stage: str) -> dict[str, int]:
    """Rows per status over the whole manifest."""
    counts = Counter(read_columns(root, stage, ["status"])["status"].to_pylist())
    return {s: counts.get(s, 0) for s in ("ok", "failed", "filtered")}


def drop_status(root: str, stage: str, status: str) -> int:
    """Rewrite each part without its rows of ``status`` (atomically per part); returns rows dropped."""
    dropped = 0
    for uri in part_files(root, stage):
        fs, path = store.resolve(uri)
        table = pq.read_table(path, filesystem=fs)
        keep = pc.not_equal(table["status"], status)
        n_drop = len(table) - pc.sum(keep).as_py() if len(table) else 0
        if n_drop == 0:
            continue
        dropped += n_drop
        kept = table.filter(keep)
        if len(kept):
            store.write_parquet(uri, kept)
        else:
            store.remove(uri)
    return dropped


def read_success(root: str, stage: str) -> dict[str, Any] | None:
    uri = store.join(stage_dir(root, stage), SUCCESS)
    return store.read_json(uri) if store.exists(uri) else None


def write_success(root: str, stage: str, summary: dict[str, Any]) -> None:
    store.write_json(store.join(stage_dir(root, stage), SUCCESS), summary)


def clear_success(root: str, stage: str) -> None:
    store.remove(store.join(stage_dir(root, stage), SUCCESS))
