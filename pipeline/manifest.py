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


def read_part(uri: str, columns: list[str], status: str | None = None) -> pa.Table:
    """Some columns of one manifest part, optionally only the rows of one status."""
    fs, path = store.resolve(uri)
    t = pq.read_table(path, filesystem=fs, columns=list(dict.fromkeys([*columns, *(["status"] if status else [])])))
    if status:
        t = t.filter(pc.equal(t["status"], status))
    return t.select(columns)


def read_columns(root: str, stage: str, columns: list[str], status: str | None = None) -> pa.Table:
    """Read some columns of all parts of a stage on the driver (small columns only), optionally one status."""
    tables = [read_part(uri, columns, status) for uri in part_files(root, stage)]
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


STATUS_RANK = {"ok": 0, "filtered": 1, "failed": 2}


def dedupe(root: str, stage: str) -> int:
    """Keep one row per video_id (the best status, then the first part); returns rows removed.

    Duplicates arise when a killed run's in-flight tasks finish after a rerun has read what was
    done; the rerun calls this before it declares the stage complete.
    """
    parts = part_files(root, stage)
    best: dict[str, tuple[int, int]] = {}  # video_id -> (rank, part index)
    counts: Counter[str] = Counter()
    per_part: list[tuple[list[str], list[str]]] = []
    for i, uri in enumerate(parts):
        fs, path = store.resolve(uri)
        t = pq.read_table(path, filesystem=fs, columns=["video_id", "status"])
        ids, statuses = t["video_id"].to_pylist(), t["status"].to_pylist()
        per_part.append((ids, statuses))
        for vid, st in zip(ids, statuses):
            counts[vid] += 1
            cand = (STATUS_RANK.get(st, 3), i)
            if vid not in best or cand < best[vid]:
                best[vid] = cand
    if all(n == 1 for n in counts.values()):
        return 0
    removed = 0
    for i, (uri, (ids, _)) in enumerate(zip(parts, per_part)):
        keep = [counts[v] == 1 or best[v][1] == i for v in ids]
        # within the winning part a duplicate id may repeat: keep its first occurrence only
        seen: set[str] = set()
        for j, v in enumerate(ids):
            if keep[j] and counts[v] > 1:
                keep[j] = v not in seen
                seen.add(v)
        if all(keep):
            continue
        removed += len(keep) - sum(keep)
        fs, path = store.resolve(uri)
        table = pq.read_table(path, filesystem=fs).filter(pa.array(keep))
        if len(table):
            store.write_parquet(uri, table)
        else:
            store.remove(uri)
    return removed
