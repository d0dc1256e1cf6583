"""Stage manifests: ``{root}/{stage}/part-*.parquet`` plus ``_SUCCESS.json`` when the stage completes.

Every row has ``video_id``, ``status`` (ok | failed | filtered) and ``error``. Resume reads only the
``video_id`` column; ``--retry-failed`` rewrites parts without their failed rows (each part
atomically), after which those ids are simply not done and a resumed run redoes them. Rows that
failed for a transient local reason (``error`` starting with ``contracts.status.TRANSIENT``: a full disk, a
lost permission, a killed worker) are dropped the same way at the start of every run, so a plain
rerun retries them.

A part that cannot be read (cut short by a full disk or a broken copy) raises ``ManifestPartError``
naming the file and what to do, never a raw Parquet error.

At scale (issue 19) a stage writes one part per ``run.rows_per_part`` rows: 39,000 parts for VIDAL-10M's
ten million rows at 256 a part, each one listing entry, one footer request and one read task downstream.
``compact`` merges the small parts into files of about ``run.compact_target_mb`` (at every stage end, by
``contracts.stage_end``), and ``_parts.json`` beside the parts keeps each part's size, rows, status counts
and uncompressed column bytes, so that ``_SUCCESS.json``'s totals and the start-up footer check cost one
listing plus the parts written since, not one read per part; a part's writer can give its entry
(``write_part_file``), so that not even those are read. A merge is journalled (``_compact-*.json``: inputs and
output) before its output is written and the journal is removed after its inputs are deleted, so a kill at
any point is repaired by ``recover_compaction`` (output committed: finish deleting the inputs; else: drop the
journal) and every row is in exactly one part.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from contracts import store
from contracts.status import FAILED, FILTERED, OK, STATUSES, TRANSIENT

PART_PREFIX, PART_SUFFIX = "part-", ".parquet"
SUCCESS = "_SUCCESS.json"
STATS = "_parts.json"  # per-part statistics: {"parts": {name: {bytes, rows, ok, failed, filtered, columns}}}
JOURNAL_PREFIX = "_compact-"
READERS = 16  # parts the driver reads at once


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


def _each_part(fn: Callable[[str], Any], uris: list[str]) -> list[Any]:
    """``fn`` over parts, ``READERS`` at once: on an object store each part is a request whose latency,
    not bandwidth, bounds a driver that reads thousands of them one by one."""
    if len(uris) <= 1:
        return [fn(u) for u in uris]
    with ThreadPoolExecutor(READERS) as pool:
        return list(pool.map(fn, uris))


def read_columns(root: str, stage: str, columns: list[str], status: str | None = None) -> pa.Table:
    """Read some columns of all parts of a stage on the driver (small columns only), optionally one status."""
    tables = _each_part(lambda uri: read_part(uri, columns, status), part_files(root, stage))
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    return pa.concat_tables(tables, promote_options="permissive")


def check_readable(root: str, stage: str) -> None:
    """Read the footer (a few KiB) of every part that ``_parts.json`` does not vouch for (a part whose
    statistics were taken from its footer, when it was read or by its own writer, and of the same size
    now), so that a cut-short part fails here, on the driver, naming the file, rather than in a worker
    mid-stage."""
    known = _read_stats(root, stage)
    unknown = [n for n, size in part_sizes(root, stage).items() if known.get(n, {}).get("bytes") != size]
    _each_part(_footer, [store.join(stage_dir(root, stage), n) for n in unknown])


def _footer(uri: str) -> pq.FileMetaData:
    fs, path = store.resolve(uri)
    try:
        with fs.open_input_file(path) as f:
            return pq.read_metadata(f)
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
    """Rows per status over the whole manifest (from ``_parts.json``, reading only the parts it lacks)."""
    stats = part_stats(root, stage)
    return {s: sum(p[s] for p in stats.values()) for s in STATUSES}


def drop_rows(
    root: str,
    stage: str,
    drop: Callable[[pa.Table], pa.Array],
    columns: tuple[str, ...] = ("video_id", "status", "error"),
) -> int:
    """Rewrite each part without the rows where ``drop(table of columns)`` is true (atomically per
    part; only parts with such rows are read whole); returns rows dropped."""
    dropped, rewritten = 0, []
    for uri in part_files(root, stage):
        mask = drop(_read_table(uri, list(columns))).fill_null(False)
        n_drop = pc.sum(mask).as_py() or 0
        if n_drop == 0:
            continue
        dropped += n_drop
        _rewrite_part(uri, _read_table(uri).filter(pc.invert(mask)))
        rewritten.append(uri)
    _forget_stats(root, stage, rewritten)
    return dropped


def _rewrite_part(uri: str, kept: pa.Table) -> None:
    """Replace a part by the rows it keeps (atomically), or remove it when none are left."""
    if len(kept):
        store.write_parquet(uri, kept)
    else:
        store.remove(uri)


def drop_status(root: str, stage: str, status: str) -> int:
    """Rewrite each part without its rows of ``status``; returns rows dropped."""
    return drop_rows(root, stage, lambda t: pc.equal(t["status"], status))


def drop_transient_failures(root: str, stage: str) -> int:
    """Drop failed rows whose reason is transient, so that this run retries them; returns how many."""
    return drop_rows(
        root, stage, lambda t: pc.and_(pc.equal(t["status"], FAILED), pc.starts_with(t["error"], TRANSIENT))
    )


def read_success(root: str, stage: str) -> dict[str, Any] | None:
    uri = store.join(stage_dir(root, stage), SUCCESS)
    return store.read_json(uri) if store.exists(uri) else None


def write_success(root: str, stage: str, summary: dict[str, Any]) -> None:
    store.write_json(store.join(stage_dir(root, stage), SUCCESS), summary)


def clear_success(root: str, stage: str) -> None:
    store.remove(store.join(stage_dir(root, stage), SUCCESS))


STATUS_RANK = {OK: 0, FILTERED: 1, FAILED: 2}


def dedupe(root: str, stage: str) -> int:
    """Keep one row per video_id (the best status, then the first part); returns rows removed.

    Duplicates arise when a killed run's in-flight tasks finish after a rerun has read what was
    done; the rerun's stage end removes them (``contracts.stage_end``, which reads only the parts that
    may hold one) before it declares the stage complete. This reads every part's ids.
    """
    ids = read_columns(root, stage, ["video_id"])["video_id"]
    if len(pc.unique(ids)) == len(ids):  # the usual case, in Arrow: no Python object per id
        return 0
    removed, rewritten = dedupe_parts(part_files(root, stage))
    _forget_stats(root, stage, rewritten)
    return removed


def dedupe_parts(uris: list[str]) -> tuple[int, list[str]]:
    """Keep one row per video_id among the parts ``uris`` (the best status, then the first part), which
    must hold every copy of any id that has one; returns (rows removed, the parts rewritten or removed)."""
    best: dict[str, tuple[int, int]] = {}  # video_id -> (rank, part index)
    counts: Counter[str] = Counter()
    per_part: list[list[str]] = []
    for i, uri in enumerate(uris):
        t = _read_table(uri, ["video_id", "status"])
        ids, statuses = t["video_id"].to_pylist(), t["status"].to_pylist()
        per_part.append(ids)
        for vid, st in zip(ids, statuses):
            counts[vid] += 1
            cand = (STATUS_RANK.get(st, 3), i)
            if vid not in best or cand < best[vid]:
                best[vid] = cand
    if all(n == 1 for n in counts.values()):
        return 0, []
    removed, rewritten = 0, []
    for i, (uri, ids) in enumerate(zip(uris, per_part)):
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
        _rewrite_part(uri, _read_table(uri).filter(pa.array(keep)))
        rewritten.append(uri)
    return removed, rewritten


# -- per-part statistics and compaction -------------------------------------------------------------
def part_sizes(root: str, stage: str) -> dict[str, int]:
    """Each committed part's name and size in bytes, from one listing (no per-part request)."""
    fs, path = store.resolve(stage_dir(root, stage))
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except FileNotFoundError:
        return {}
    return {
        i.base_name: i.size
        for i in sorted(infos, key=lambda i: i.base_name)
        if i.type == pafs.FileType.File
        and i.base_name.startswith(PART_PREFIX)
        and i.base_name.endswith(PART_SUFFIX)
    }


def _read_stats(root: str, stage: str) -> dict[str, dict[str, Any]]:
    uri = store.join(stage_dir(root, stage), STATS)
    try:
        return store.read_json(uri)["parts"]
    except (FileNotFoundError, KeyError, ValueError, TypeError):
        return {}  # absent, or an older layout: recomputed from the parts


def _stats_of(uri: str, nbytes: int, status: pa.ChunkedArray | pa.Array | None = None) -> dict[str, Any]:
    """One part's entry in ``_parts.json``, from its footer (which also proves the part readable, so
    ``check_readable`` may trust it) and its ``status`` column."""
    if status is None:
        status = read_part(uri, ["status"])["status"]
    return entry_of(_footer(uri), nbytes, status)


def entry_of(meta: pq.FileMetaData, nbytes: int, status: pa.ChunkedArray | pa.Array) -> dict[str, Any]:
    """A part's ``_parts.json`` entry: bytes, rows, rows per status and each column's uncompressed bytes."""
    counts = Counter(status.to_pylist())
    columns: Counter[str] = Counter()
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            chunk = group.column(c)
            columns[chunk.path_in_schema.split(".")[0]] += chunk.total_uncompressed_size
    return {
        "bytes": nbytes,
        "rows": meta.num_rows,
        **{s: counts.get(s, 0) for s in STATUSES},
        "columns": dict(columns),
    }


def write_part_file(uri: str, table: pa.Table) -> dict[str, Any]:
    """Write one part atomically (as ``store.write_parquet``) and return its ``_parts.json`` entry, from
    the writer's own footer and byte count: nothing is read back."""
    footer: list[pq.FileMetaData] = []
    with store.open_atomic(uri) as f:
        pq.write_table(table, f, compression="zstd", metadata_collector=footer)
        nbytes = f.tell()
    return entry_of(footer[0], nbytes, table["status"])


def read_ids_and_stats(uri: str, nbytes: int) -> tuple[dict[str, Any], pa.Array]:
    """A part's ``_parts.json`` entry and its ids, in one open of the file (footer, then two columns)."""
    fs, path = store.resolve(uri)
    try:
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            t = pf.read(columns=["video_id", "status"])
    except (pa.ArrowException, OSError) as e:
        raise ManifestPartError(uri, e) from None
    return entry_of(pf.metadata, nbytes, t["status"]), t["video_id"].combine_chunks()


def part_stats(
    root: str, stage: str, write: bool = False, fresh: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Statistics of every committed part: those in ``_parts.json`` (or ``fresh``) whose size still
    matches, the others read (footer and ``status`` column); with ``write`` the sidecar is brought up
    to date."""
    saved = _read_stats(root, stage)
    known = {**saved, **(fresh or {})}
    sizes = part_sizes(root, stage)
    stats = {
        name: known[name] if known.get(name, {}).get("bytes") == size else None
        for name, size in sizes.items()
    }
    missing = [name for name, entry in stats.items() if entry is None]
    read = _each_part(lambda n: _stats_of(store.join(stage_dir(root, stage), n), sizes[n]), missing)
    stats.update(zip(missing, read))
    if write and (stats != saved or not store.exists(store.join(stage_dir(root, stage), STATS))):
        store.write_json(store.join(stage_dir(root, stage), STATS), {"parts": stats})
    return stats


def _forget_stats(root: str, stage: str, uris: list[str]) -> None:
    """Drop rewritten parts from ``_parts.json`` (a rewrite keeps the part's name)."""
    known = _read_stats(root, stage)
    names = {u.rsplit("/", 1)[-1] for u in uris}
    if known and names & known.keys():
        kept = {n: v for n, v in known.items() if n not in names}
        store.write_json(store.join(stage_dir(root, stage), STATS), {"parts": kept})


def _weights(stats: dict[str, dict[str, Any]]) -> dict[str, int]:
    """What a part weighs for compaction: its bytes on disk or, when larger, its columns' uncompressed
    bytes, so that a merged part is at most about the target in memory too (one read task holds one
    part: well-compressed captions would otherwise put a whole run's rows in one task)."""
    return {n: max(e["bytes"], sum(e["columns"].values())) for n, e in stats.items()}


def plan_compaction(sizes: dict[str, int], target_bytes: int) -> list[list[str]]:
    """Groups of small parts (under half the target), in name order, each group's bytes at most the
    target; groups of one part are left as they are."""
    groups: list[list[str]] = []
    current: list[str] = []
    total = 0
    for name in sorted(n for n, b in sizes.items() if b < target_bytes // 2):
        if current and total + sizes[name] > target_bytes:
            groups.append(current)
            current, total = [], 0
        current.append(name)
        total += sizes[name]
    groups.append(current)
    return [g for g in groups if len(g) > 1]


def _merged_name(inputs: list[str]) -> str:
    # from the inputs, so a retried merge of the same parts writes the same name
    digest = hashlib.sha1("\n".join(sorted(inputs)).encode()).hexdigest()[:32]
    return f"{PART_PREFIX}c{digest}{PART_SUFFIX}"


def merge_parts(root: str, stage: str, inputs: list[str]) -> tuple[str, dict[str, Any]]:
    """Merge the parts ``inputs`` (names) into one; returns the output's name and statistics.

    Journal first, then the output (atomic), then the inputs deleted, then the journal: a kill anywhere
    leaves a state ``recover_compaction`` repairs with no row lost or doubled. The inputs are read and
    deleted ``READERS`` at a time: on an object store each is a request, and a merge has thousands."""
    out_dir = stage_dir(root, stage)
    output = _merged_name(inputs)
    journal = store.join(out_dir, f"{JOURNAL_PREFIX}{output[: -len(PART_SUFFIX)]}.json")
    store.write_json(journal, {"inputs": inputs, "output": output})
    uris = [store.join(out_dir, n) for n in inputs]
    table = pa.concat_tables(_each_part(_read_table, uris), promote_options="permissive").combine_chunks()
    stats = write_part_file(store.join(out_dir, output), table)
    _each_part(store.remove, uris)
    store.remove(journal)
    return output, stats


def recover_compaction(root: str, stage: str) -> int:
    """Finish or undo the merges a killed run left (see ``merge_parts``); returns how many."""
    out_dir = stage_dir(root, stage)
    journals = store.list_files(out_dir, prefix=JOURNAL_PREFIX, suffix=".json")
    for journal in journals:
        entry = store.read_json(journal)
        if store.exists(store.join(out_dir, entry["output"])):  # committed: its inputs are redundant
            for name in entry["inputs"]:
                store.remove(store.join(out_dir, name))
        store.remove(journal)  # not committed: the inputs are intact, a temp file at most is left
    return len(journals)


def compact(
    root: str,
    stage: str,
    target_bytes: int,
    map_groups: Callable[[Callable[[list[str]], Any], list[list[str]]], Any] = map,
    stats: dict[str, dict[str, Any]] | None = None,
) -> dict[str, int]:
    """Merge a stage's small parts into parts of about ``target_bytes`` (on disk and uncompressed, see
    ``_weights``) and write ``_parts.json``.

    ``map_groups(fn, groups)`` runs the merges (the runner spreads them over Ray tasks; the default runs
    them here, one after another). ``stats``: every committed part's entry, when the caller knows them
    (the stage end, ``contracts.stage_end``, which has repaired the directory): then nothing but the
    merges' inputs is read. Returns the parts before and after."""
    if stats is None:
        recover_compaction(root, stage)
        store.remove_temp_files(stage_dir(root, stage))
        stats = part_stats(root, stage)
    before, merges = len(stats), 0
    # Merged parts compress better than their inputs did; one still under half the target is merged
    # again with its like, so a second compaction finds nothing to do.
    while groups := plan_compaction(_weights(stats), target_bytes) if target_bytes > 0 else []:
        merged = dict(map_groups(functools.partial(merge_parts, root, stage), groups))
        gone = {n for g in groups for n in g}
        stats = {**{n: e for n, e in stats.items() if n not in gone}, **merged}
        merges += len(groups)
    store.write_json(store.join(stage_dir(root, stage), STATS), {"parts": dict(sorted(stats.items()))})
    return {"parts_before": before, "parts_after": len(stats), "merges": merges}
