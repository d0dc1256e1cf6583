"""Stage manifests: ``{root}/{stage}/part-*.parquet`` plus ``_SUCCESS.json`` when the stage completes.

Every row has ``video_id``, ``status`` (ok | failed | filtered) and ``error``. Resume reads only the
``video_id`` column; ``--retry-failed`` rewrites parts without their failed rows (each part
atomically), after which those ids are simply not done and a resumed run redoes them. Rows that
failed for a transient local reason (``error`` starting with ``contracts.status.TRANSIENT``: a full disk, a
lost permission, a killed worker) are dropped the same way at the start of every run, so a plain
rerun retries them.

A part that cannot be read (cut short by a full disk or a broken copy) raises ``ManifestPartError``
naming the file and what to do, never a raw Parquet error.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from contracts import store
from contracts.status import TRANSIENT

PART_PREFIX, PART_SUFFIX = "part-", ".parquet"
SUCCESS = "_SUCCESS.json"


class StageInputError(RuntimeError):
    """A stage cannot start: a required upstream stage has no output in this run root, or it is unreadable."""


class ManifestPartError(StageInputError):
    """A manifest part that cannot be read."""

    def __init__(self, uri: str, cause: Exception):
        reason = " ".join(str(cause).split())[:200]
        super().__init__(
            f"manifest part {uri} cannot be read ({type(cause).__name__}: {reason}); it was probably cut short "
            f"by a full disk or an interrupted copy. --retry-failed cannot help: remove that file and rerun "
            f"the same command; the stage redoes the rows it held"
        )


def _read_table(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = store.resolve(uri)
    try:
        return pq.read_table(path, filesystem=fs, columns=columns)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as e:
        raise ManifestPartError(uri, e) from None


def stage_dir(root: str, stage: str) -> str:
    return store.join(root, stage)


def part_files(root: str, stage: str) -> list[str]:
    """The committed Parquet parts of a stage (temp files excluded), sorted."""
    return store.list_files(stage_dir(root, stage), prefix=PART_PREFIX, suffix=PART_SUFFIX)


def new_part_uri(root: str, stage: str) -> str:
    return store.join(stage_dir(root, stage), f"{PART_PREFIX}{uuid.uuid4().hex}{PART_SUFFIX}")


def has_output(root: str, stage: str) -> bool:
    """True when the stage wrote parts, or completed on an empty input (its ``_SUCCESS.json``)."""
    return bool(part_files(root, stage)) or store.exists(store.join(stage_dir(root, stage), SUCCESS))


def read_part(uri: str, columns: list[str], status: str | None = None) -> pa.Table:
    """Some columns of one manifest part, optionally only the rows of one status."""
    t = _read_table(uri, list(dict.fromkeys([*columns, *(["status"] if status else [])])))
    if status:
        t = t.filter(pc.equal(t["status"], status))
    return t.select(columns)


def read_columns(root: str, stage: str, columns: list[str], status: str | None = None) -> pa.Table:
    """Read some columns of all parts of a stage on the driver (small columns only), optionally one status."""
    tables = [read_part(uri, columns, status) for uri in part_files(root, stage)]
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    return pa.concat_tables(tables, promote_options="permissive")


def check_readable(root: str, stage: str) -> None:
    """Read every part's footer (a few KiB each), so that a cut-short part fails here, on the driver,
    naming the file, rather than in a worker mid-stage."""
    for uri in part_files(root, stage):
        fs, path = store.resolve(uri)
        try:
            with fs.open_input_file(path) as f:
                pq.read_metadata(f)
        except (pa.ArrowException, OSError) as e:
            raise ManifestPartError(uri, e) from None


def read_schema(root: str, stage: str) -> pa.Schema | None:
    """The schema of a stage's manifest (from its first part), or None when it has no output."""
    parts = part_files(root, stage)
    if not parts:
        return None
    fs, path = store.resolve(parts[0])
    try:
        return pq.read_schema(path, filesystem=fs)
    except (pa.ArrowException, OSError) as e:
        raise ManifestPartError(parts[0], e) from None


def done_ids(root: str, stage: str) -> pa.Array:
    """All video_ids a stage has already written (any status): the rows a resumed run skips."""
    return read_columns(root, stage, ["video_id"])["video_id"].combine_chunks()


def status_counts(root: str, stage: str) -> dict[str, int]:
    """Rows per status over the whole manifest."""
    counts = Counter(read_columns(root, stage, ["status"])["status"].to_pylist())
    return {s: counts.get(s, 0) for s in ("ok", "failed", "filtered")}


def drop_rows(
    root: str,
    stage: str,
    drop: Callable[[pa.Table], pa.Array],
    columns: tuple[str, ...] = ("video_id", "status", "error"),
) -> int:
    """Rewrite each part without the rows where ``drop(table of columns)`` is true (atomically per
    part; only parts with such rows are read whole); returns rows dropped."""
    dropped = 0
    for uri in part_files(root, stage):
        mask = drop(_read_table(uri, list(columns))).fill_null(False)
        n_drop = pc.sum(mask).as_py() or 0
        if n_drop == 0:
            continue
        dropped += n_drop
        kept = _read_table(uri).filter(pc.invert(mask))
        if len(kept):
            store.write_parquet(uri, kept)
        else:
            store.remove(uri)
    return dropped


def drop_status(root: str, stage: str, status: str) -> int:
    """Rewrite each part without its rows of ``status``; returns rows dropped."""
    return drop_rows(root, stage, lambda t: pc.equal(t["status"], status))


def drop_transient_failures(root: str, stage: str) -> int:
    """Drop failed rows whose reason is transient, so that this run retries them; returns how many."""
    return drop_rows(
        root, stage, lambda t: pc.and_(pc.equal(t["status"], "failed"), pc.starts_with(t["error"], TRANSIENT))
    )


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
        t = _read_table(uri, ["video_id", "status"])
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
        table = _read_table(uri).filter(pa.array(keep))
        if len(table):
            store.write_parquet(uri, table)
        else:
            store.remove(uri)
    return removed
