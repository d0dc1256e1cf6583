"""The stage end (``contracts.stage_end``) reads each part written since the last end at most once, and is
exact: every id once, no row lost, the best row of a duplicate kept, whether the part writers reported their
parts (the driver that wrote them) or not (a killed driver's rerun), after a real kill -9 of the end itself,
and with hashes that collide."""

from __future__ import annotations

import collections
import os
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from contracts import manifest, store
from contracts.stage_end import Written, end_stage
from pipeline.stage_output import StageReport, collect, finish_output, write_part
from tests.killing import kill_9_when

STAGE = "probe"
REPO = Path(__file__).resolve().parent.parent


def _rows(start: int, n: int, status: str | None = None) -> pa.Table:
    ids = [f"youtube-{i:011d}" for i in range(start, start + n)]
    st = [status or ("ok" if i % 5 else ("failed" if i % 2 else "filtered")) for i in range(start, start + n)]
    return pa.table(
        {
            "video_id": ids,
            "status": st,
            "error": pa.array([None if s == "ok" else f"reason {s}" for s in st], pa.string()),
            "payload": [os.urandom(40) for _ in ids],
        }
    )


def _written_by_writers(root: str, tables: list[pa.Table]) -> StageReport:
    """The parts written as the runner writes them (``write_part``), their stats rows collected by the
    driver's ``collect``."""
    report = StageReport(stage=STAGE)
    collect(iter([write_part(t, root, STAGE) for t in tables]), report, 0, 1e9)
    return report


def _all_rows(root: str) -> pa.Table:
    return manifest.read_columns(root, STAGE, ["video_id", "status", "error", "payload"]).sort_by("video_id")


def _assert_exact(root: str, expected: pa.Table) -> None:
    got = _all_rows(root)
    ids = got["video_id"].to_pylist()
    assert len(ids) == len(set(ids)), "an id is in two parts"
    assert got.equals(expected.sort_by("video_id")), "rows lost or changed"


def _assert_stats_true(root: str) -> None:
    """``_parts.json`` describes exactly the committed parts, as their footers and rows say."""
    stats = store.read_json(store.join(manifest.stage_dir(root, STAGE), manifest.STATS))["parts"]
    sizes = manifest.part_sizes(root, STAGE)
    assert set(stats) == set(sizes)
    for name, entry in stats.items():
        uri = store.join(manifest.stage_dir(root, STAGE), name)
        assert entry == manifest._stats_of(uri, sizes[name]), name


@pytest.fixture
def reads(monkeypatch):
    """Every read of a manifest part, by part name (footers, columns, whole parts)."""
    counts: collections.Counter[str] = collections.Counter()

    def counted(fn):
        def wrapper(uri, *args, **kwargs):
            counts[uri.rsplit("/", 1)[1]] += 1
            return fn(uri, *args, **kwargs)

        return wrapper

    for name in ("_read_table", "_footer", "read_ids_and_stats"):
        monkeypatch.setattr(manifest, name, counted(getattr(manifest, name)))
    return counts


def test_reported_parts_are_read_once_by_the_merges_and_nothing_else(tmp_path, reads):
    root = str(tmp_path)
    tables = [_rows(i * 7, 7) for i in range(40)]
    report = _written_by_writers(root, tables)
    new = set(manifest.part_sizes(root, STAGE))
    assert set(report.written.entries) == new and len(report.written.hashes()) == 280
    target = max(manifest.part_sizes(root, STAGE).values()) * 10
    reads.clear()
    c = end_stage(root, STAGE, target, report.written)
    assert c["parts_read"] == 0 and c["duplicates_removed"] == 0 and c["merges"] > 0
    assert {n: reads[n] for n in new} == dict.fromkeys(new, 1)  # the merge's read, nothing before it
    # nothing else was read but merged outputs that a second round merged again (tiny parts compress
    # far better merged): no footer or column read of any part to check or count it
    assert all(n.startswith(f"{manifest.PART_PREFIX}c") for n in set(reads) - new)
    _assert_exact(root, pa.concat_tables(tables))
    _assert_stats_true(root)
    assert manifest.status_counts(root, STAGE) == {"ok": 224, "failed": 28, "filtered": 28}

    # an end with nothing new reads nothing; one with new parts reads the older parts' ids once
    reads.clear()
    assert end_stage(root, STAGE, target, Written())["parts_read"] == 0 and not reads
    old = set(manifest.part_sizes(root, STAGE))
    more = [_rows(1000 + i * 7, 7) for i in range(5)]
    report = _written_by_writers(root, more)
    reads.clear()
    c = end_stage(root, STAGE, target, report.written)
    assert c["parts_read"] == len(old)
    assert all(reads[n] <= 2 for n in old)  # its ids, and its merge if it is small
    assert all(reads[n] == 1 for n in report.written.entries)
    _assert_exact(root, pa.concat_tables(tables + more))
    _assert_stats_true(root)


def test_unreported_parts_are_read_once_before_their_merge(tmp_path, reads):
    """A killed driver's rerun has no report: its parts are read once (footer, ids, status), then merged."""
    root = str(tmp_path)
    tables = [_rows(i * 5, 5) for i in range(20)]
    for t in tables:
        store.write_parquet(manifest.new_part_uri(root, STAGE), t)
    names = set(manifest.part_sizes(root, STAGE))
    reads.clear()
    c = end_stage(root, STAGE, max(manifest.part_sizes(root, STAGE).values()) * 8)
    assert c["parts_read"] == 20
    assert all(reads[n] == 2 for n in names)  # read_ids_and_stats + the merge
    _assert_exact(root, pa.concat_tables(tables))
    _assert_stats_true(root)


def test_duplicates_of_stragglers_and_retried_writers_are_removed_reading_only_their_parts(tmp_path, reads):
    """The rerun's own parts (reported), a killed run's straggler that wrote rows the rerun also wrote
    (unreported, one of them failed there), and the first copy of a retried writer task (unreported, the
    same rows as a reported part): one row per id, the ok one, and the clean parts never compared."""
    root = str(tmp_path)
    tables = [_rows(i * 10, 10, "ok") for i in range(12)]
    report = _written_by_writers(root, tables)
    straggler = _rows(15, 10, "failed")  # ids 15-24: in the rerun's parts 1 and 2
    store.write_parquet(manifest.new_part_uri(root, STAGE), straggler)
    store.write_parquet(manifest.new_part_uri(root, STAGE), tables[7])  # a retried task's first copy
    clean = {n for n, (a, _) in report.written.spans.items() if a // 10 not in (1, 2, 7)}
    reads.clear()
    c = end_stage(root, STAGE, target_bytes=0, written=report.written)  # no merge: only the check reads
    assert c["duplicates_removed"] == 10 + 10
    assert not any(reads[n] for n in clean), "a part without a duplicate hash was read"
    _assert_exact(root, pa.concat_tables(tables))
    _assert_stats_true(root)


def test_a_new_copy_of_a_row_of_an_earlier_end_is_removed(tmp_path):
    """What a ``PendingIds`` hash collision can make: this run redoes a row an earlier end kept."""
    root = str(tmp_path)
    first = [_rows(i * 10, 10) for i in range(6)]
    end_stage(root, STAGE, 1 << 20, _written_by_writers(root, first).written)
    again = _rows(33, 1)  # redone: an id of the first run, status and payload new
    fresh = _rows(100, 10)
    report = _written_by_writers(root, [fresh, again])
    c = end_stage(root, STAGE, 1 << 20, report.written)
    assert c["duplicates_removed"] == 1
    kept = pa.concat_tables([*first, fresh])
    _assert_exact(root, kept)  # same status: the earlier end's row stays, as it was
    _assert_stats_true(root)


def test_colliding_hashes_of_distinct_ids_lose_no_row(tmp_path):
    """Hashes cut to 3 bits (every part shares them): every part is compared, and distinct ids stay."""
    root = str(tmp_path)
    tables = [_rows(i * 6, 6) for i in range(10)]
    report = _written_by_writers(root, tables)
    cut = Written()
    for name, entry in report.written.entries.items():
        a, b = report.written.spans[name]
        cut.add(name, entry, (report.written.hashes()[a:b] & np.uint64(7)).tobytes())
    c = end_stage(root, STAGE, 0, cut)
    assert c["duplicates_removed"] == 0
    _assert_exact(root, pa.concat_tables(tables))
    _assert_stats_true(root)


def test_reported_parts_on_the_object_store(s3_server):
    """On the S3 test server the writer's own byte count is the object's size (so the entry vouches
    for it) and the end reads each reported part once."""
    store.configure(s3_server.storage())
    root = f"{s3_server.make_bucket('stage-end')}/run"
    tables = [_rows(i * 9, 9) for i in range(12)]
    report = _written_by_writers(root, tables)
    sizes = manifest.part_sizes(root, STAGE)
    assert {n: e["bytes"] for n, e in report.written.entries.items()} == sizes
    c = end_stage(root, STAGE, max(sizes.values()) * 20, report.written)
    assert c["parts_read"] == 0 and c["parts_after"] == 1
    _assert_exact(root, pa.concat_tables(tables))
    _assert_stats_true(root)


def test_through_a_ray_plan_and_finish_output(tmp_path, ray_local):
    """The runner's writer as Ray tasks, its stats rows collected from the plan, the stage end given them."""
    import ray

    from stages import get_stage_class
    from stages.base import RunContext

    root = str(tmp_path)
    rows = _rows(0, 600)
    ds = (
        ray.data.from_arrow(rows)
        .repartition(6)
        .map_batches(
            write_part, batch_size=100, batch_format="pyarrow", fn_kwargs={"root": root, "stage": STAGE}
        )
    )
    report = StageReport(stage=STAGE)
    collect(ds.iter_batches(batch_format="pyarrow", batch_size=None), report, 600, 1e9)
    assert report.rows_in == 600 and len(report.written.entries) == report.parts
    cls = get_stage_class(STAGE)
    stage = cls(cls.Config(), RunContext(root=root))
    finish_output(stage, root, 1.0, report)
    _assert_exact(root, rows)
    _assert_stats_true(root)
    assert len(manifest.part_files(root, STAGE)) == 1


KILLED = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    from contracts import stage_end
    stage_end.end_stage({root!r}, {stage!r}, target_bytes={target})
    """
)


def _inodes(root: str) -> dict[str, int]:
    out = {}
    for p in (Path(root) / STAGE).glob("part-*.parquet"):
        try:
            out[p.name] = p.stat().st_ino
        except FileNotFoundError:  # removed by the end while we looked
            pass
    return out


@pytest.mark.parametrize("at", ["dedupe", "merge"])
def test_kill_9_during_the_stage_end_then_rerun_keeps_every_id_once(tmp_path, at):
    """A real stage end in another process (no report: the rerun of a killed driver), killed with SIGKILL
    while it rewrites the stragglers' parts that hold duplicates, or once it merged some parts, then run
    again: every id once, the ok rows kept."""
    root = str(tmp_path)
    tables = [_rows(i * 4, 4, "ok") for i in range(200)]
    for t in tables:
        store.write_parquet(manifest.new_part_uri(root, STAGE), t)
    originals = set(manifest.part_sizes(root, STAGE))
    extra = []
    for i, t in enumerate(tables[:120:2]):  # stragglers: two failed copies and two rows of their own
        copies = t.slice(0, 2).set_column(1, "status", pa.array(["failed"] * 2))
        extra.append(_rows(10_000 + 2 * i, 2, "ok"))
        store.write_parquet(manifest.new_part_uri(root, STAGE), pa.concat_tables([copies, extra[-1]]))
    before = _inodes(root)
    target = max(manifest.part_sizes(root, STAGE).values()) * 6
    script = KILLED.format(repo=str(REPO), root=root, stage=STAGE, target=target)

    def landed() -> bool:
        now = _inodes(root)
        changed = [n for n, ino in now.items() if n not in originals and before.get(n) not in (None, ino)]
        return len(changed) >= 3 if at == "dedupe" else len(originals - now.keys()) >= 30

    killed = kill_9_when(script, landed)
    assert killed, "the stage end finished before the kill: make the manifest bigger"
    c = end_stage(root, STAGE, target)
    _assert_exact(root, pa.concat_tables(tables + extra))
    _assert_stats_true(root)
    assert not list((tmp_path / STAGE).glob(f"{manifest.JOURNAL_PREFIX}*"))
    assert c["parts_after"] < 200 // 3


def test_the_runner_hands_its_written_parts_to_the_stage_end(tmp_path, ray_local, good_videos, monkeypatch):
    """Through ``run_pipeline``: every stage's end gets the parts its writers reported and reads none of
    them for the duplicate check."""
    from pipeline import stage_output
    from pipeline.runner import run_pipeline
    from tests.conftest import write_list
    from tests.test_pipeline_run import config_for, read_manifest

    stages = ["discover", "download", "probe", "shard"]
    seen = []
    real = stage_output.end_stage

    def spy(root, stage, target, written, map_groups):
        counts = real(root, stage, target, written, map_groups)
        seen.append((stage, len(written.entries) if written else 0, counts))
        return counts

    monkeypatch.setattr(stage_output, "end_stage", spy)
    rows = [{"path": str(p), "title": p.stem, "hashtags": ""} for p in good_videos[:4]]
    root = tmp_path / "root"
    run_pipeline(config_for(root, write_list(tmp_path / "videos.csv", rows)), stages)
    assert [s for s, _, _ in seen] == stages
    for stage, reported, counts in seen:
        assert reported > 0 and counts["parts_read"] == 0 and counts["duplicates_removed"] == 0, stage
    for s in stages[1:]:
        ids = [r["video_id"] for r in read_manifest(root, s)]
        assert len(ids) == len(set(ids)) == 4
