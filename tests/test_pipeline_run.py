"""Whole runs on a real local Ray instance: manifests, stats, shards, resume, --force, --retry-failed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from contracts import manifest
from contracts import shard_format as fmt
from pipeline.config import load_config
from pipeline.runner import run_pipeline, run_stage
from tests.conftest import write_list

REPO = Path(__file__).resolve().parent.parent
STAGES = "[discover, download, probe, shard]"
BAD = ("truncated", "zero_bytes", "not_video", "audio_only", "tiny_resolution", "huge_resolution", "missing")


def config_for(root: Path, inputs: Path, *extra: str):
    return load_config(
        REPO / "configs" / "demo.yaml",
        [
            f"run.root={root}",
            f"run.stages={STAGES}",
            f"discover.inputs=[{inputs}]",
            "run.demo_media=",
            "shard.samples_per_shard=4",
            "run.rows_per_part=5",
            *extra,
        ],
    )


def read_manifest(root: Path, stage: str) -> list[dict]:
    return [r for part in manifest.part_files(str(root), stage) for r in pq.read_table(part).to_pylist()]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, ray_local, good_videos, bad_inputs):
    d = tmp_path_factory.mktemp("run")
    rows = [{"path": str(p), "title": f"clip {p.stem}", "hashtags": "#demo #shapes"} for p in good_videos]
    rows += [{"path": str(bad_inputs[k]), "title": k, "hashtags": ""} for k in (*BAD, "no_audio")]
    rows.append({"path": str(good_videos[0]), "title": "duplicate row", "hashtags": ""})  # same file twice
    inputs = write_list(d / "videos.csv", rows)
    root = d / "root"
    reports = run_pipeline(config_for(root, inputs), ["discover", "download", "probe", "shard"])
    return root, inputs, reports, good_videos, bad_inputs


def test_every_row_ends_with_a_status_and_reason(finished_run):
    root, _, reports, good, bad = finished_run
    by = {r.stage: r for r in reports}
    assert by["discover"].rows_in == len(good) + len(BAD) + 1  # the duplicate path is one video_id
    probe = {r["video_id"]: r for r in read_manifest(root, "probe")}
    download = {r["video_id"]: r for r in read_manifest(root, "download")}
    discover = {r["video_id"]: r for r in read_manifest(root, "discover")}
    title_of = {v: r["title"] for v, r in discover.items()}
    status = {}
    for vid, title in title_of.items():
        row = probe.get(vid) or download.get(vid)
        status[title] = (row["status"], row["error"])
    assert status["missing"][0] == "failed" and "not found" in status["missing"][1]
    assert status["zero_bytes"][0] == "failed" and "empty file" in status["zero_bytes"][1]
    for k in ("truncated", "not_video", "audio_only"):
        assert status[k][0] == "failed", k
    for k in ("tiny_resolution", "huge_resolution"):
        assert status[k][0] == "filtered", k
    assert status["no_audio"] == ("ok", None)
    assert by["probe"].counts == {"ok": len(good) + 1, "failed": 3, "filtered": 2}
    for rows in (probe, download, discover):
        assert all(r["status"] in ("ok", "failed", "filtered") for r in rows.values())
        assert all((r["error"] is None) == (r["status"] == "ok") for r in rows.values())


def test_success_files_record_stats(finished_run):
    root, *_ = finished_run
    probe = json.loads((root / "probe" / "_SUCCESS.json").read_text())
    assert probe["totals"] == {"ok": 9, "failed": 3, "filtered": 2}
    assert probe["rows_in"] == 14 and probe["wall_s"] > 0 and len(probe["config_hash"]) == 16
    assert {r["status"] for r in probe["top_reasons"]} == {"failed", "filtered"}
    assert all(r["example"] and r["count"] >= 1 for r in probe["top_reasons"])
    shard = json.loads((root / "shard" / "_SUCCESS.json").read_text())
    assert shard["samples"] == 9 and shard["shards"] == 3  # 4 per shard


def test_shards_read_back_with_webdataset_match_manifests(finished_run):
    root, *_ = finished_run
    tars = sorted((root / "shard").glob("*.tar"))
    for t in tars:  # each tar is named from the keys its index lists
        assert t.stem == fmt.shard_name_for(pq.read_table(t.with_suffix(".parquet"))["key"].to_pylist())
    probe = {r["video_id"]: r for r in read_manifest(root, "probe") if r["status"] == "ok"}
    discover = {r["video_id"]: r for r in read_manifest(root, "discover")}
    seen = []
    for sample in wds.WebDataset([str(t) for t in tars], shardshuffle=False):
        key = sample["__key__"]
        seen.append(key)
        p = probe[key]
        assert [sample[fmt.frame_key("rgb", i)] for i in range(fmt.NUM_FRAMES)] == p["frames"]
        assert sample.get(fmt.AUDIO_KEY) == p["audio"]
        meta = json.loads(sample[fmt.JSON_KEY])
        assert set(meta) == set(fmt.JSON_FIELDS)
        assert meta["video_id"] == key and meta["title"] == discover[key]["title"]
        assert meta["duration"] == p["duration"] and meta["width"] == p["width"]
        assert meta["raw"].startswith(discover[key]["title"])
    assert sorted(seen) == sorted(probe)
    index = pq.read_table(str(tars[0]).replace(".tar", ".parquet")).to_pylist()
    assert [r["key"] for r in index] == seen[: len(index)]


def shard_samples(root: Path) -> dict[str, dict]:
    tars = [str(t) for t in sorted((root / "shard").glob("*.tar"))]
    return {
        s["__key__"]: {k: v for k, v in s.items() if not k.startswith("__")}
        for s in wds.WebDataset(tars, shardshuffle=False)
    }


def test_broadcast_and_shuffle_joins_shard_the_same_samples(finished_run, tmp_path):
    root, inputs, *_ = finished_run  # made with the default: upstreams this small are broadcast
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    report = run_stage(config_for(copy, inputs, "run.broadcast_join_mb=0"), "shard", "force")
    assert report.counts["ok"] == 9
    assert shard_samples(copy) == shard_samples(root)


def test_lookup_join_is_inner_or_left_outer_and_keeps_nested_columns(ray_local):
    import pyarrow as pa
    import ray

    from pipeline.upstream import _lookup_join

    streamed = pa.table({"video_id": ["a", "b", "c"], "frames": [[b"1"], [b"2", b"2"], [b"3"]]})
    required = pa.table({"video_id": ["c", "a"], "title": ["C", "A"]})
    optional = pa.table({"video_id": ["a"], "ofa": [["x", "y"]]})
    out = _lookup_join(streamed, [(ray.put(required), "inner"), (ray.put(optional), "left_outer")])
    assert sorted(out.to_pylist(), key=lambda r: r["video_id"]) == [
        {"video_id": "a", "frames": [b"1"], "title": "A", "ofa": ["x", "y"]},
        {"video_id": "c", "frames": [b"3"], "title": "C", "ofa": None},
    ]
    assert out.schema.field("ofa").type == pa.list_(pa.string())


def test_resume_skips_done_rows_and_adds_nothing(finished_run, tmp_path):
    root, inputs, *_ = finished_run
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    before = {s: len(read_manifest(copy, s)) for s in ("discover", "probe", "shard")}
    reports = run_pipeline(config_for(copy, inputs), ["discover", "download", "probe", "shard"])
    assert all(r.rows_in == 0 for r in reports)
    assert {s: len(read_manifest(copy, s)) for s in before} == before
    assert reports[2].skipped == 14


def test_retry_failed_redoes_only_failed_rows(finished_run, tmp_path):
    root, inputs, _, good, bad = finished_run
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    shutil.copy(good[1], bad["missing"])  # the missing file appears
    try:
        cfg = config_for(copy, inputs)
        report = run_stage(cfg, "download", "retry_failed")
        assert report.rows_in == 2  # missing + zero-byte were the failed downloads
        rows = read_manifest(copy, "download")
        assert len(rows) == len({r["video_id"] for r in rows})
        assert sum(r["status"] == "ok" for r in rows) == len(good) + 1 + 5 + 1
        probe = run_stage(cfg, "probe")
        assert probe.rows_in == 1 and probe.counts["ok"] == 1
    finally:
        bad["missing"].unlink()


def test_force_redoes_the_stage(finished_run, tmp_path):
    root, inputs, *_ = finished_run
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    report = run_stage(config_for(copy, inputs), "probe", "force")
    assert report.rows_in == 14 and report.skipped == 0
    assert len(read_manifest(copy, "probe")) == 14


def test_missing_upstream_is_a_clear_error(tmp_path, ray_local):
    from pipeline.upstream import StageInputError

    with pytest.raises(StageInputError, match="needs the output of"):
        run_stage(config_for(tmp_path / "empty", tmp_path / "none.csv"), "probe")


@pytest.mark.slow
def test_killed_run_resumes_without_duplicates_or_loss(tmp_path, good_videos):
    """Kill the CLI (`python pipeline/run.py`, the `ray submit` form) mid-probe, then rerun it."""
    from pipeline.synthetic import CONCEPTS, make_clip

    # one 10 s 720p clip under 30 names: distinct video_ids, slow enough to decode to kill mid-stage
    source = tmp_path / "source.mp4"
    make_clip(source, CONCEPTS[0], seconds=10.0, fps=30, size=(1280, 720), seed=0, audio=False)
    clips = []
    for i in range(30):
        clips.append(tmp_path / f"k{i}.mp4")
        os.link(source, clips[-1])
    inputs = write_list(tmp_path / "list.csv", [{"path": str(p), "title": p.stem} for p in clips])
    root = tmp_path / "root"
    args = [
        sys.executable,
        "pipeline/run.py",
        "--config",
        "configs/demo.yaml",
        "--root",
        str(root),
        "--input",
        str(inputs),
        "--set",
        "run.stages=[discover, download, probe]",
        "--set",
        "run.ray_address=local",
        "--set",
        "run.rows_per_part=1",
        "--set",
        "probe.batch_size=1",
        "--set",
        "probe.planned_decode=false",
    ]
    proc = subprocess.Popen(
        args, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 180
    while time.time() < deadline and len(manifest.part_files(str(root), "probe")) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # tasks already running in Ray workers may still finish and write their part
    stable, n = time.time(), len(manifest.part_files(str(root), "probe"))
    while time.time() - stable < 3:
        time.sleep(0.2)
        if len(manifest.part_files(str(root), "probe")) != n:
            stable, n = time.time(), len(manifest.part_files(str(root), "probe"))
    written = len(read_manifest(root, "probe"))
    assert 0 < written < 30, "the kill must land mid-stage"
    assert not (root / "probe" / "_SUCCESS.json").exists()
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = read_manifest(root, "probe")
    ids = [x["video_id"] for x in rows]
    assert len(ids) == len(set(ids)) == 30
    assert all(x["status"] == "ok" for x in rows)
    assert json.loads((root / "probe" / "_SUCCESS.json").read_text())["skipped_already_done"] == written


def test_dedupe_keeps_one_row_per_video_preferring_ok(tmp_path):
    """A straggler from a killed run can write a row that the rerun also wrote."""
    import pyarrow as pa

    from contracts import store
    from stages.base import BASE_FIELDS

    root = str(tmp_path)
    schema = pa.schema(BASE_FIELDS + [pa.field("x", pa.int64())])
    store.write_parquet(
        manifest.new_part_uri(root, "s"),
        pa.Table.from_pylist(
            [
                {"video_id": "a", "status": "failed", "error": "boom", "x": 1},
                {"video_id": "b", "status": "ok", "x": 2},
            ],
            schema=schema,
        ),
    )
    store.write_parquet(
        manifest.new_part_uri(root, "s"),
        pa.Table.from_pylist(
            [
                {"video_id": "a", "status": "ok", "x": 3},
                {"video_id": "b", "status": "ok", "x": 4},
                {"video_id": "c", "status": "ok", "x": 5},
            ],
            schema=schema,
        ),
    )
    assert manifest.dedupe(root, "s") == 2
    rows = sorted(
        (r for p in manifest.part_files(root, "s") for r in pq.read_table(p).to_pylist()),
        key=lambda r: r["video_id"],
    )
    assert [(r["video_id"], r["status"]) for r in rows] == [("a", "ok"), ("b", "ok"), ("c", "ok")]
    assert manifest.dedupe(root, "s") == 0


def test_demo_config_runs_the_curation_stages():
    """The demo lists clip and score; its long videos are split (longer than clip.max_duration, inside
    the crawl's and probe's 20 s caps) and the caps pass the preflight check."""
    from pipeline.preflight import check_clip_durations
    from pipeline.synthetic import long_demo_videos

    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert "clip" in cfg.run.stages and cfg.run.demo_media.long_videos > 0
    check_clip_durations(cfg, list(cfg.run.stages))
    lengths = [sum(s) for _, _, s, _ in long_demo_videos(cfg.run.demo_media.long_videos)]
    caps = (cfg.discover.max_duration, cfg.download.max_duration, cfg.probe.max_duration)
    assert all(cfg.clip.max_duration < n <= min(caps) for n in lengths), (lengths, caps)
    assert any(still for *_, still in long_demo_videos(cfg.run.demo_media.long_videos))
    assert cfg.clip.min_motion is not None  # the slideshow's still clips are what it filters
    # the score stage runs offline on the tiny model, with a threshold, after every stage it reads
    assert cfg.score.model == "tiny" and cfg.score.min_similarity is not None
    assert cfg.run.stages[-2:] == ["score", "shard"]
