"""Clip rows downstream: a real pipeline (real Ray, real PyAV videos with hard cuts) runs discover (a
local list) -> download -> probe -> clip -> caption (tiny) -> shard. Each clip becomes a shard sample of
its own carrying its parent's title; short videos pass through with probe's frames; counts are exact,
whichever join reads the upstreams. A driver killed during clip and a rerun give every clip once."""

from __future__ import annotations

import contextlib
import json
import os
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
from contracts.status import FILTERED, OK
from pipeline.config import load_config
from pipeline.preflight import UserError, check_clip_durations
from pipeline.runner import run_pipeline, run_stage
from pipeline.synthetic import CONCEPTS, make_long_video
from pipeline.upstream import clip_plan
from tests.conftest import write_list

REPO = Path(__file__).resolve().parent.parent
STAGES = ["discover", "download", "probe", "clip", "caption", "shard"]
SETTINGS = [
    "run.demo_media=",
    "run.rows_per_part=3",
    "probe.short_side=64",
    "clip.short_side=64",
    "clip.max_duration=8",
    "clip.min_motion=0.05",
    "caption.batch_size=4",
    "shard.samples_per_shard=4",
]


def rows_of(root: Path, stage: str) -> list[dict]:
    return [r for p in manifest.part_files(str(root), stage) for r in pq.read_table(p).to_pylist()]


def config_for(root: Path, inputs: Path, *extra: str):
    return load_config(
        REPO / "configs" / "demo.yaml",
        [
            f"run.root={root}",
            f"run.stages=[{', '.join(STAGES)}]",
            f"discover.inputs=[{inputs}]",
            *SETTINGS,
            *extra,
        ],
    )


def cli(root: Path, sets: list[str]) -> list[str]:
    """``pipeline/run.py`` (the ``ray submit`` form) on the demo config with ``--set`` overrides."""
    args = [sys.executable, "pipeline/run.py", "--config", "configs/demo.yaml", "--root", str(root)]
    for s in sets:
        args += ["--set", s]
    return args


def samples(root: Path) -> dict[str, dict]:
    tars = sorted(str(t) for t in (root / "shard").glob("*.tar"))
    return {s["__key__"]: s for s in wds.WebDataset(tars, shardshuffle=False)}


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory, ray_local, good_videos):
    d = tmp_path_factory.mktemp("clip_pipeline")
    # 3 + 5 + 9 s: clips at the two cuts, the 9 s scene cut at the 8 s stride and its 1 s tail dropped
    moving = d / "moving.mp4"
    cuts = make_long_video(moving, CONCEPTS[:3], [3.0, 5.0, 9.0], size=(160, 120), seed=11)
    still = d / "slideshow.mp4"  # three still pictures with music: every clip below clip.min_motion
    make_long_video(still, CONCEPTS[3:6], [4.0, 9.0, 5.0], size=(160, 120), seed=21, still=True)
    listed = [
        {"path": str(moving), "title": "three scenes in a row", "hashtags": "#long #cuts"},
        {"path": str(still), "title": "a slideshow with music", "hashtags": "#still"},
        *({"path": str(p), "title": f"short {p.stem}", "hashtags": "#short"} for p in good_videos[:2]),
    ]
    inputs = write_list(d / "videos.csv", listed)
    root = d / "root"
    reports = {r.stage: r for r in run_pipeline(config_for(root, inputs), STAGES)}
    return root, inputs, reports, listed, cuts


@pytest.mark.slow
def test_each_clip_is_a_sample_with_its_parents_metadata(clip_run):
    root, _, reports, listed, cuts = clip_run
    assert cuts == [3.0, 8.0]
    discover = {r["video_id"]: r for r in rows_of(root, "discover")}
    title_of = {r["video_id"]: r["title"] for r in discover.values()}
    by_title = {t: v for v, t in title_of.items()}
    moving, still = by_title["three scenes in a row"], by_title["a slideshow with music"]
    shorts = {by_title[f"short {Path(x['path']).stem}"] for x in listed[2:]}

    clip = {r["video_id"]: r for r in rows_of(root, "clip")}
    ok = {v: r for v, r in clip.items() if r["status"] == OK}
    assert sorted(ok) == sorted([f"{moving}-c0", f"{moving}-c1", f"{moving}-c2", *shorts])
    assert [(ok[f"{moving}-c{k}"]["start"], ok[f"{moving}-c{k}"]["end"]) for k in range(3)] == [
        (0.0, 3.0),
        (3.0, 8.0),
        (8.0, 16.0),
    ]
    stills = [r for v, r in clip.items() if r["parent_id"] == still and v != still]
    assert len(stills) == 3 and all(
        r["status"] == FILTERED and "below clip.min_motion" in r["error"] for r in stills
    )
    assert clip[moving]["status"] == FILTERED and clip[moving]["clips"] == 3
    assert reports["clip"].counts == {OK: 5, "failed": 0, FILTERED: 5}, reports["clip"].counts

    # the stages after clip see clip rows, exactly those ok, once each
    caption = rows_of(root, "caption")
    assert sorted(r["video_id"] for r in caption) == sorted(ok)
    assert all(r["status"] == OK and len(r["ofa"]) == 8 for r in caption)
    got = samples(root)
    assert sorted(got) == sorted(ok) and reports["shard"].counts[OK] == 5
    for key, s in got.items():
        meta = json.loads(s[fmt.JSON_KEY])
        parent = ok[key]["parent_id"]
        assert meta["video_id"] == key and meta["title"] == title_of[parent], key
        assert meta["url"] == f"file://{discover[parent]['path']}"  # the parent's, from discover
        assert meta["duration"] == pytest.approx(ok[key]["end"] - ok[key]["start"])
        assert (meta["parent_id"], meta["start"], meta["end"]) == (parent, ok[key]["start"], ok[key]["end"])
        assert [s[fmt.frame_key("rgb", i)] for i in range(8)] == ok[key]["frames"]  # the clip's own frames
        assert s[fmt.AUDIO_KEY] == ok[key]["audio"]


@pytest.mark.slow
def test_short_videos_pass_through_unchanged(clip_run):
    root, *_ = clip_run
    probe = {r["video_id"]: r for r in rows_of(root, "probe") if r["status"] == OK}
    got = samples(root)
    passed = [r for r in rows_of(root, "clip") if r["status"] == OK and r["parent_id"] == r["video_id"]]
    assert len(passed) == 2
    for r in passed:
        p, s = probe[r["video_id"]], got[r["video_id"]]
        assert (r["start"], r["end"], r["duration"]) == (0.0, p["duration"], p["duration"])
        assert [s[fmt.frame_key("rgb", i)] for i in range(8)] == p["frames"]
        assert s[fmt.AUDIO_KEY] == p["audio"]
        assert json.loads(s[fmt.JSON_KEY])["duration"] == p["duration"]


@pytest.mark.slow
def test_shuffle_join_by_parent_gives_the_same_samples(clip_run, tmp_path):
    root, inputs, *_ = clip_run
    before = {k: json.loads(s[fmt.JSON_KEY]) for k, s in samples(root).items()}
    report = run_stage(config_for(root, inputs, "run.broadcast_join_mb=0"), "shard", "force")
    assert report.counts[OK] == 5
    after = {k: json.loads(s[fmt.JSON_KEY]) for k, s in samples(root).items()}
    assert after == before
    again = run_stage(config_for(root, inputs), "caption")  # resume: every clip is done already
    assert again.rows_in == 0 and again.skipped == 5


@pytest.mark.slow
def test_score_reads_clip_rows_and_shard_drops_what_it_filters(clip_run):
    root, inputs, *_ = clip_run
    stages = "run.stages=[discover, download, probe, clip, caption, score, shard]"
    score = [
        "score.model=tiny",
        "score.fields=[mplug]",
        "score.dedup=false",
        "score.min_similarity=null",
        stages,
    ]
    first = run_stage(config_for(root, inputs, *score), "score")
    clip_ok = sorted(r["video_id"] for r in rows_of(root, "clip") if r["status"] == OK)
    scored = {r["video_id"]: r["score_mplug"] for r in rows_of(root, "score")}
    assert first.counts[OK] == 5 and sorted(scored) == clip_ok  # one score per clip, parents never
    low = sorted(scored.values())
    cut = (low[1] + low[2]) / 2  # the two lowest-scoring rows fall below it
    again = run_stage(config_for(root, inputs, *score, f"score.min_similarity={cut}"), "score", "force")
    kept = sorted(r["video_id"] for r in rows_of(root, "score") if r["status"] == OK)
    assert again.counts == {OK: 3, "failed": 0, FILTERED: 2} and len(kept) == 3
    report = run_stage(config_for(root, inputs, stages), "shard", "force")
    assert report.counts[OK] == 3 and sorted(samples(root)) == kept


def test_clip_plan_swaps_probe_and_joins_earlier_stages_by_parent():
    run = ["discover", "download", "probe", "clip", "caption", "enhance", "shard"]
    assert clip_plan("caption", run, ["probe"], ["discover"], True) == (
        ["clip"],
        ["discover"],
        frozenset({"discover"}),
    )
    # enhance on captions: clip comes in for the parent key of discover
    assert clip_plan("enhance", run, ["caption"], ["discover", "asr"], True) == (
        ["clip", "caption"],
        ["discover", "asr"],
        frozenset({"discover"}),
    )
    assert clip_plan("depth", run, ["probe"], [], True) == (["clip"], [], frozenset())
    # clip not listed, not run yet under this root, or the stage is not after it: unchanged
    unchanged = (["probe"], ["discover"], frozenset())
    assert clip_plan("caption", [s for s in run if s != "clip"], ["probe"], ["discover"], True) == unchanged
    assert clip_plan("caption", run, ["probe"], ["discover"], False) == unchanged
    assert clip_plan("clip", run, ["probe", "download"], [], True) == (["probe", "download"], [], frozenset())


def test_lookup_join_by_parent_keeps_the_clip_id(ray_local):
    import pyarrow as pa
    import ray

    from pipeline.upstream import _lookup_join

    streamed = pa.table(
        {"video_id": ["p-c0", "p-c1", "s", "q-c0"], "parent_id": ["p", "p", "s", "q"], "frames": [[b"0"]] * 4}
    )
    discover = pa.table({"video_id": ["p", "s"], "title": ["long", "short"]})
    caption = pa.table({"video_id": ["p-c1", "s"], "mplug": ["a clip", "a short"]})
    out = _lookup_join(
        streamed,
        [(ray.put(discover), "inner", "parent_id"), (ray.put(caption), "left_outer")],
        drop=["parent_id"],
    )
    assert sorted(out.to_pylist(), key=lambda r: r["video_id"]) == [
        {"video_id": "p-c0", "frames": [b"0"], "title": "long", "mplug": None},
        {"video_id": "p-c1", "frames": [b"0"], "title": "long", "mplug": "a clip"},
        {"video_id": "s", "frames": [b"0"], "title": "short", "mplug": "a short"},
    ]


def test_probe_max_duration_below_what_clip_splits_is_a_user_error(tmp_path):
    def check(*overrides: str, stages=("probe", "clip")) -> None:
        cfg = load_config(
            REPO / "configs" / "demo.yaml", ["run.stages=[discover, download, probe, clip]", *overrides]
        )
        check_clip_durations(cfg, list(stages))

    check("clip.max_duration=8")  # the demo's caps: 20 s everywhere, clips of at most 8 s
    check("probe.max_duration=null", "download.max_duration=null", "discover.max_duration=null")
    check("probe.max_duration=600", "download.max_duration=600", "discover.max_duration=null")
    with pytest.raises(UserError, match=r"probe.max_duration=20 is not above clip.max_duration=20") as e:
        check("clip.max_duration=20")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=r"probe.max_duration=60 is below .*download.max_duration=600") as e:
        check("probe.max_duration=60", "download.max_duration=600", "discover.max_duration=null")
    assert "probe.max_duration to 600 or null" in str(e.value)
    with pytest.raises(UserError, match=r"discover.max_duration=null, download.max_duration=null"):
        check("probe.max_duration=60", "download.max_duration=null", "discover.max_duration=null")
    check("clip.max_duration=20", stages=("caption",))  # neither probe nor clip runs: nothing to check
    check("clip.max_duration=20", "run.stages=[discover, download, probe]")  # no clip in the run

    # through the CLI: exit 2, one line naming the keys, nothing written
    root = tmp_path / "root"
    sets = ["run.stages=[discover, download, probe, clip]", "probe.max_duration=60"]
    sets += [
        "download.max_duration=300",
        "discover.max_duration=null",
        f"run.demo_media.dir={tmp_path / 'media'}",
    ]
    res = subprocess.run(cli(root, sets), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "probe.max_duration=60" in lines[0] and "download.max_duration=300" in lines[0]
    assert not root.exists() and not (tmp_path / "media").exists()


@pytest.mark.slow
def test_driver_killed_during_clip_then_rerun_gives_every_clip_once(tmp_path):
    source = tmp_path / "source.mp4"  # 3 + 5 + 9 s at 640x360 / 30 fps: slow enough to kill mid-stage
    make_long_video(source, CONCEPTS[6:9], [3.0, 5.0, 9.0], fps=30, size=(640, 360), seed=5)
    videos = []
    for i in range(12):  # twelve names for one file: twelve parents, three clips each
        videos.append(tmp_path / f"long{i}.mp4")
        os.link(source, videos[-1])
    inputs = write_list(tmp_path / "list.csv", [{"path": str(p), "title": p.stem} for p in videos])
    root = tmp_path / "root"
    sets = ["run.stages=[discover, download, probe, clip]", "run.ray_address=local", "run.num_cpus=2"]
    sets += [*SETTINGS, "run.rows_per_part=1", "clip.batch_size=1", "clip.short_side=256"]
    args = [*cli(root, sets), "--input", str(inputs)]
    proc = subprocess.Popen(
        args, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not manifest.part_files(str(root), "clip") and proc.poll() is None:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
        stable, n = time.time(), len(manifest.part_files(str(root), "clip"))
        while time.time() - stable < 3:  # a task already running may still write its part
            time.sleep(0.2)
            if len(manifest.part_files(str(root), "clip")) != n:
                stable, n = time.time(), len(manifest.part_files(str(root), "clip"))
        written = rows_of(root, "clip")
        assert 0 < len(written) < 48, f"the kill must land mid-stage: {proc.stderr.read().decode()[-2000:]}"
        assert not (root / "clip" / "_SUCCESS.json").exists()
        again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    rows = rows_of(root, "clip")
    ids = [r["video_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 48  # 12 parents' own rows + 36 clips, each once
    parents = [r for r in rows if r["clips"]]
    assert len(parents) == 12 and all(r["status"] == FILTERED and r["clips"] == 3 for r in parents)
    clips = [r for r in rows if r["parent_id"] and r["video_id"] != r["parent_id"]]
    assert len(clips) == 36 and all(r["status"] == OK for r in clips)
    assert sorted(r["video_id"] for r in clips) == sorted(
        f"{p['video_id']}-c{k}" for p in parents for k in range(3)
    )
    done = json.loads((root / "clip" / "_SUCCESS.json").read_text())
    assert done["skipped_already_done"] > 0
