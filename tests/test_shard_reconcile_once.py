"""The shard stage's end reads each shard index once: reconcile counts what the repaired directory holds and
the stage's summary (``_SUCCESS.json``) reports that count, equal to what the tars hold when read back."""

from __future__ import annotations

import collections

import pyarrow as pa

from contracts import manifest, store
from stages import get_stage_class
from stages.base import RunContext
from stages.shard import INDEX_SCHEMA, ShardStage, commit_shard, read_tar_samples, shard_names
from stages.shards import reconcile as reconcile_module


def test_reconcile_reads_each_index_once_and_its_tally_is_what_the_tars_hold(tmp_path, monkeypatch):
    root = str(tmp_path / "root")
    shard_dir = store.join(root, "shard")

    def publish(keys: list[str]) -> str:
        index = pa.Table.from_pylist([{"key": k, "bytes": 10 + len(k)} for k in keys], schema=INDEX_SCHEMA)
        samples = [(k, {"json": f'{{"video_id": "{k}"}}'.encode()}) for k in keys]
        return commit_shard(shard_dir, samples, index, root, None)

    first = publish(["a", "b", "dd"])
    publish(["b", "c"])  # b twice: the first tar is rewritten without it (no manifest row names either)
    publish(["e"])
    store.write_parquet(
        manifest.new_part_uri(root, "shard"),
        ShardStage.rows_to_table([{"video_id": "a", "status": "ok", "shard": first, "bytes": 11}]),
    )
    reads: collections.Counter[str] = collections.Counter()
    real = reconcile_module.read_index

    def counted(directory, name, columns=None):
        reads[name] += 1
        return real(directory, name, columns)

    monkeypatch.setattr(reconcile_module, "read_index", counted)
    cls = get_stage_class("shard")
    stage = cls(cls.Config(), RunContext(root=root))
    counts = stage.reconcile()
    assert counts["duplicates_removed"] == 1
    # each index once, plus the one of the tar rewritten without the duplicate (to rewrite it)
    assert sorted(reads.values()) == [1, 1, 2]

    held = {}
    for name in shard_names(shard_dir):
        for key, _files in read_tar_samples(store.join(shard_dir, f"{name}.tar")):
            assert key not in held
            held[key] = name
    summary = stage.summary()
    assert summary["samples"] == len(held) == 5 and summary["shards"] == len(shard_names(shard_dir)) == 3
    assert summary["bytes"] == sum(10 + len(k) for k in held)
    # a fresh stage object (no reconcile in this process) reads the indexes and says the same
    assert cls(cls.Config(), RunContext(root=root)).summary() == summary
