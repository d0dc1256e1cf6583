"""Compaction merges a stage's small manifest parts, exactly: every row once, none lost, the same rows and
columns, whatever point a kill -9 interrupts it at; ``_parts.json`` agrees with the parts it describes, and
start-up checks and totals trust it only where the part is the one it describes."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contracts import manifest, store
from tests.killing import kill_9_when

STAGE = "probe"
REPO = Path(__file__).resolve().parent.parent


def _rows(start: int, n: int) -> pa.Table:
    ids = [f"youtube-{i:011d}" for i in range(start, start + n)]
    status = ["ok" if i % 5 else ("failed" if i % 2 else "filtered") for i in range(start, start + n)]
    return pa.table(
        {
            "video_id": ids,
            "status": status,
            "error": pa.array([None if s == "ok" else f"reason {s}" for s in status], pa.string()),
            "payload": [os.urandom(40) for _ in ids],
        }
    )


def _manifest(root: str, parts: int, rows: int) -> pa.Table:
    tables = [_rows(i * rows, rows) for i in range(parts)]
    for t in tables:
        store.write_parquet(manifest.new_part_uri(root, STAGE), t)
    return pa.concat_tables(tables)


def _all_rows(root: str) -> pa.Table:
    t = manifest.read_columns(root, STAGE, ["video_id", "status", "error", "payload"])
    return t.sort_by("video_id")


def _assert_exact(root: str, expected: pa.Table) -> None:
    got = _all_rows(root)
    ids = got["video_id"].to_pylist()
    assert len(ids) == len(set(ids)), "an id is in two parts"
    assert got.equals(expected.sort_by("video_id")), "rows lost or changed"


def test_compaction_merges_small_parts_exactly_and_keeps_stats(tmp_path):
    root = str(tmp_path)
    expected = _manifest(root, parts=60, rows=7)
    size = max(manifest.part_sizes(root, STAGE).values())
    counts_before = manifest.status_counts(root, STAGE)
    result = manifest.compact(root, STAGE, target_bytes=size * 10)
    assert result["parts_before"] == 60 and result["parts_after"] <= 60 // 5
    _assert_exact(root, expected)
    stats = store.read_json(str(tmp_path / STAGE / manifest.STATS))["parts"]
    assert set(stats) == set(manifest.part_sizes(root, STAGE))
    for name, entry in stats.items():
        t = pq.read_table(tmp_path / STAGE / name)
        assert entry["rows"] == len(t) and entry["bytes"] == (tmp_path / STAGE / name).stat().st_size
        assert {s: entry[s] for s in ("ok", "failed", "filtered")} == {
            s: t["status"].to_pylist().count(s) for s in ("ok", "failed", "filtered")
        }
        assert set(entry["columns"]) == {"video_id", "status", "error", "payload"}
    assert manifest.status_counts(root, STAGE) == counts_before
    assert sum(counts_before.values()) == len(expected)
    # a second pass has nothing left to merge and changes nothing
    assert manifest.compact(root, STAGE, target_bytes=size * 10)["merges"] == 0
    _assert_exact(root, expected)


def test_target_zero_keeps_the_parts_and_still_writes_stats(tmp_path):
    root = str(tmp_path)
    _manifest(root, parts=5, rows=3)
    assert manifest.compact(root, STAGE, target_bytes=0) == {"parts_before": 5, "parts_after": 5, "merges": 0}
    assert len(store.read_json(str(tmp_path / STAGE / manifest.STATS))["parts"]) == 5


def test_stats_are_trusted_only_for_the_part_they_describe(tmp_path):
    root = str(tmp_path)
    _manifest(root, parts=4, rows=5)
    manifest.compact(root, STAGE, target_bytes=0)
    # a part rewritten by --retry-failed keeps its name: its entry is dropped, the totals follow the rows
    dropped = manifest.drop_status(root, STAGE, "failed")
    assert dropped > 0
    counts = manifest.status_counts(root, STAGE)
    assert counts["failed"] == 0 and sum(counts.values()) == 20 - dropped
    # a part cut short after its stats were taken (size differs) is not vouched for: the check reads it
    manifest.part_stats(root, STAGE, write=True)
    victim = sorted((tmp_path / STAGE).glob("part-*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[:-30])
    with pytest.raises(manifest.ManifestPartError, match=victim.name):
        manifest.check_readable(root, STAGE)


@pytest.mark.parametrize("crash", ["journal", "output", "some_inputs_deleted"])
def test_each_crash_point_is_repaired(tmp_path, crash):
    """The three states a kill can leave one merge in, built step by step as ``merge_parts`` does."""
    root = str(tmp_path)
    expected = _manifest(root, parts=6, rows=4)
    names = sorted(manifest.part_sizes(root, STAGE))
    out_dir = manifest.stage_dir(root, STAGE)
    output = manifest._merged_name(names)
    journal = store.join(out_dir, f"{manifest.JOURNAL_PREFIX}{output[:-8]}.json")
    store.write_json(journal, {"inputs": names, "output": output})
    if crash != "journal":
        merged = pa.concat_tables([pq.read_table(tmp_path / STAGE / n) for n in names])
        store.write_parquet(store.join(out_dir, output), merged)
    if crash == "some_inputs_deleted":
        for n in names[:3]:
            store.remove(store.join(out_dir, n))
    assert manifest.recover_compaction(root, STAGE) == 1
    assert not list((tmp_path / STAGE).glob(f"{manifest.JOURNAL_PREFIX}*"))
    _assert_exact(root, expected)
    assert len(manifest.part_files(root, STAGE)) == (6 if crash == "journal" else 1)


KILLED = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    from contracts import manifest
    manifest.compact({root!r}, {stage!r}, target_bytes={target})
    """
)


@pytest.mark.parametrize("gone", [1, 40, 120])
def test_kill_9_during_compaction_then_rerun_loses_and_doubles_nothing(tmp_path, gone):
    """A real compaction in another process, killed with SIGKILL once ``gone`` input parts are deleted,
    then compacted again: every id exactly once, every row as written."""
    root = str(tmp_path)
    expected = _manifest(root, parts=300, rows=3)
    inputs = [tmp_path / STAGE / n for n in manifest.part_sizes(root, STAGE)]
    target = max(manifest.part_sizes(root, STAGE).values()) * 6
    script = KILLED.format(repo=str(REPO), root=root, stage=STAGE, target=target)
    killed = kill_9_when(script, lambda: sum(not p.exists() for p in inputs) >= gone)
    assert killed, "compaction finished before the kill: make the manifest bigger"
    manifest.compact(root, STAGE, target_bytes=target)
    _assert_exact(root, expected)
    assert not list((tmp_path / STAGE).glob(f"{manifest.JOURNAL_PREFIX}*"))
    assert not list((tmp_path / STAGE).glob(".*"))  # no temp file left
    assert len(manifest.part_files(root, STAGE)) < 300 // 4


def test_a_merged_part_stays_near_the_target_uncompressed_too(tmp_path):
    """Captions compress ~50x: by file size alone a whole run's rows would land in one part (one read
    task); weighed by the larger of file and uncompressed bytes, merged parts stay near the target."""
    root = str(tmp_path)
    for i in range(40):
        caps = [f"a dog runs on a sunny beach, take {i * 50 + j}; " * 40 for j in range(50)]
        t = _rows(i * 50, 50).append_column("caption", pa.array(caps))
        store.write_parquet(manifest.new_part_uri(root, STAGE), t)
    stats = manifest.part_stats(root, STAGE)
    one = max(sum(e["columns"].values()) for e in stats.values())
    assert one > 5 * max(e["bytes"] for e in stats.values())  # really compressible
    target = one * 8
    manifest.compact(root, STAGE, target_bytes=target)
    after = manifest.part_stats(root, STAGE)
    assert 40 // 8 <= len(after) < 40 // 2
    assert all(sum(e["columns"].values()) <= target + one for e in after.values())
    assert sum(e["rows"] for e in after.values()) == 2000
