"""Make a run root's shards agree with the shard manifest, whatever killed or retried what.

Called by the driver, holding the root's lock, at the start of the shard stage (before resume reads
what is done) and at its end (before ``_SUCCESS.json`` counts the shards). The tars are the truth of
what the trainer will read, so the manifest follows them:

- temp files, and an index or a stats file without its tar (a write that never committed), are
  removed; so is a tar without its index (older roots wrote the tar first): its rows are simply redone;
- a video held by two tars (a straggler of a killed run) stays in one, the one its manifest row names
  if any, else the first by name; the other tar is rewritten without it, under the name of what it
  keeps;
- the manifest's shard rows are made to match the tars: rows naming a tar that does not hold the
  video are dropped, videos held by a tar but missing from the manifest (the driver died between the
  tar and the manifest part) get their row.

Afterwards every sample is in exactly one tar, listed once in the manifest, and resume skips it.
"""

from __future__ import annotations

from collections import defaultdict

import pyarrow as pa

from contracts import manifest, store
from contracts import shard_format as fmt
from contracts.status import OK
from stages.shard import (
    ShardStage,
    index_names,
    read_index,
    read_tar_samples,
    shard_names,
    shard_stats,
    write_tar,
)


def _rewrite_without(shard_dir: str, name: str, drop: set[str]) -> str | None:
    """Rewrite one tar and its index without the samples ``drop``; returns the new name (None: emptied)."""
    index = read_index(shard_dir, name)
    keep = pa.array([k not in drop for k in index["key"].to_pylist()])
    kept = index.filter(keep)
    new = fmt.shard_name_for(kept["key"].to_pylist()) if len(kept) else None
    old_tar = store.join(shard_dir, f"{name}.tar")
    if new is not None:

        def kept_samples():
            return ((k, files) for k, files in read_tar_samples(old_tar) if k not in drop)

        store.write_parquet(store.join(shard_dir, f"{new}.parquet"), kept)
        store.write_json(store.join(shard_dir, fmt.stats_name(new)), shard_stats(new, kept_samples()))
        write_tar(store.join(shard_dir, f"{new}.tar"), kept_samples())
    store.remove(old_tar)
    store.remove(store.join(shard_dir, f"{name}.parquet"))
    store.remove(store.join(shard_dir, fmt.stats_name(name)))
    return new


def reconcile(root: str, stage: str = "shard", tally: dict[str, int] | None = None) -> dict[str, int]:
    """Repair the shard directory and manifest of ``root`` (see the module docstring); returns counts.
    Each index is read once; ``tally``, when given, receives the shards, samples and bytes the repaired
    directory holds (what the stage's ``_SUCCESS.json`` reports, so it need not read them again)."""
    shard_dir = manifest.stage_dir(root, stage)
    counts = {"leftovers_removed": store.remove_temp_files(shard_dir)}
    tars, indexes = set(shard_names(shard_dir)), set(index_names(shard_dir))
    for name in indexes - tars:
        store.remove(store.join(shard_dir, f"{name}.parquet"))
    for name in tars - indexes:
        store.remove(store.join(shard_dir, f"{name}.tar"))
    counts["leftovers_removed"] += len(indexes ^ tars)
    for uri in store.list_files(shard_dir, suffix=fmt.STATS_SUFFIX):
        if uri.rsplit("/", 1)[1][: -len(fmt.STATS_SUFFIX)] not in tars & indexes:
            store.remove(uri)
            counts["leftovers_removed"] += 1

    rows = (
        manifest.read_columns(root, stage, ["video_id", "status", "shard"])
        if manifest.part_files(root, stage)
        else pa.table({"video_id": [], "status": [], "shard": []})
    )
    named = {
        v: s
        for v, st, s in zip(
            rows["video_id"].to_pylist(), rows["status"].to_pylist(), rows["shard"].to_pylist()
        )
        if st == OK
    }
    held: dict[str, tuple[str, int]] = {}  # key -> (the tar that keeps it, its bytes)
    others: dict[str, list[tuple[str, int]]] = defaultdict(list)  # a key's other tars (duplicates)
    for name in sorted(tars & indexes):
        t = read_index(shard_dir, name, ["key", "bytes"])
        for key, nbytes in zip(t["key"].to_pylist(), t["bytes"].to_pylist()):
            if key in held:
                others[key].append((name, nbytes))
            else:
                held[key] = (name, nbytes)
    drop: dict[str, set[str]] = defaultdict(set)
    for key, extra in others.items():
        holders = [held[key], *extra]
        names = [n for n, _ in holders]
        keeper = named[key] if named.get(key) in names else names[0]
        for name, nbytes in holders:
            if name == keeper:
                held[key] = (name, nbytes)
            else:
                drop[name].add(key)
    renamed = {name: _rewrite_without(shard_dir, name, keys) for name, keys in sorted(drop.items())}
    if renamed:  # a rewritten tar's kept samples are under its new name
        held = {key: (renamed.get(name) or name, nbytes) for key, (name, nbytes) in held.items()}
    counts["duplicates_removed"] = sum(len(k) for k in drop.values())
    if tally is not None:
        shards = (tars & indexes) - renamed.keys() | {n for n in renamed.values() if n}
        tally.update(shards=len(shards), samples=len(held), bytes=sum(b for _, b in held.values()))

    def stale(t: pa.Table) -> pa.Array:
        return pa.array(
            [
                (vid in held and (st != OK or held[vid][0] != sh)) or (st == OK and vid not in held)
                for vid, st, sh in zip(
                    t["video_id"].to_pylist(), t["status"].to_pylist(), t["shard"].to_pylist()
                )
            ],
            pa.bool_(),
        )

    counts["manifest_rows_dropped"] = manifest.drop_rows(root, stage, stale, ("video_id", "status", "shard"))
    listed = {v for v, s in named.items() if held.get(v, (None,))[0] == s}
    missing = sorted(set(held) - listed)
    if missing:
        store.write_parquet(
            manifest.new_part_uri(root, stage),
            ShardStage.rows_to_table(
                {"video_id": v, "status": OK, "shard": held[v][0], "bytes": held[v][1]} for v in missing
            ),
        )
    counts["reindexed"] = len(missing)
    return counts
