"""The clip stage on real files encoded here with PyAV: cuts found where they were made, clips with the
right bounds, frames and audio, short videos untouched, motion ordered, and resume through the runner."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from contracts import manifest
from contracts.encodings import decode_flac
from contracts.status import FAILED, FILTERED, OK
from pipeline.config import load_config
from pipeline.synthetic import CONCEPTS, Concept, encode_video, render_frames
from stages.base import RunContext
from stages.clip import ClipConfig, ClipStage, clip_id, detect_cuts
from stages.probe import ProbeConfig, ProbeStage
from tests.conftest import write_list

FPS, SIZE, RATE = 15, (160, 120), 44_100
REPO = Path(__file__).resolve().parent.parent


def scene(i: int, n: int, motion: str | None = None) -> np.ndarray:
    """A scene unlike its neighbours: its own concept, background and tint."""
    concept = CONCEPTS[(i * 7) % len(CONCEPTS)]
    if motion:
        concept = Concept(concept.colour, concept.shape, motion)
    frames = render_frames(concept, n_frames=n, size=SIZE, seed=100 + i).astype(np.int16)
    tint = np.random.default_rng(i).integers(-40, 90, size=3)
    return np.clip(frames + tint, 0, 255).astype(np.uint8)


def tones(lengths: list[int], freqs: list[float]) -> np.ndarray:
    """A tone per scene, its pitch changing exactly at each cut."""
    parts = []
    for n, f in zip(lengths, freqs):
        t = np.arange(round(n / FPS * RATE)) / RATE
        parts.append(0.3 * np.sin(2 * np.pi * f * t))
    return np.concatenate(parts).astype(np.float32)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def probe_row(path: Path, vid: str) -> dict:
    row = ProbeStage(ProbeConfig(short_side=64), RunContext(root="")).process_row(
        {"video_id": vid, "media": str(path)}
    )
    return {"video_id": vid, "media": str(path), **row}


def run_clip(rows: list[dict], **cfg) -> list[dict]:
    stage = ClipStage(ClipConfig(short_side=64, **cfg), RunContext(root=""))
    return stage.process(pa.Table.from_pylist(rows)).to_pylist()


@pytest.fixture(scope="module")
def cut_videos(tmp_path_factory) -> list[tuple[Path, list[int]]]:
    """Two videos of 12 scenes of uneven length (0.6-3 s, one of fast motion) with their cut frames."""
    d = tmp_path_factory.mktemp("cuts")
    out = []
    for v in range(2):
        rng = np.random.default_rng(v)
        lengths = rng.integers(9, 45, size=12).tolist()
        frames = np.concatenate(
            [scene(12 * v + i, n, "right" if i == 3 else None) for i, n in enumerate(lengths)]
        )
        path = d / f"cuts{v}.mp4"
        encode_video(path, frames, FPS)
        out.append((path, np.cumsum(lengths)[:-1].tolist()))
    return out


def test_hard_cuts_found_with_precision_and_recall_095_within_2_frames(cut_videos):
    true_hits = false = made = 0
    for path, cuts in cut_videos:
        detected = [round(t * FPS) for t in detect_cuts(str(path))]
        made += len(cuts)
        true_hits += sum(any(abs(d - c) <= 2 for d in detected) for c in cuts)
        false += sum(not any(abs(d - c) <= 2 for c in cuts) for d in detected)
    recall = true_hits / made
    precision = true_hits / max(true_hits + false, 1)
    assert recall >= 0.95 and precision >= 0.95, (precision, recall)


def test_fade_through_black_is_a_cut_and_a_still_long_shot_has_none(tmp_path):
    a, b = scene(40, 40), scene(41, 40)
    ramp = np.linspace(1, 0, 10)[:, None, None, None]
    frames = np.concatenate(
        [
            a[:30],
            (a[30:] * ramp).astype(np.uint8),
            np.zeros((4, *a.shape[1:]), np.uint8),
            (b[:10] * ramp[::-1]).astype(np.uint8),
            b[10:],
        ]
    )
    encode_video(tmp_path / "fade.mp4", frames, FPS)
    cuts = [round(t * FPS) for t in detect_cuts(str(tmp_path / "fade.mp4"))]
    assert len(cuts) == 1 and 40 <= cuts[0] <= 54, cuts  # inside the fade (frames 30-54)
    encode_video(tmp_path / "still.mp4", scene(42, 150), FPS)
    assert detect_cuts(str(tmp_path / "still.mp4")) == []


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> tuple[Path, list[int], list[float]]:
    """20 s: scenes of 5, 11 and 4 s, a tone per scene whose pitch changes at the cuts."""
    lengths, freqs = [75, 165, 60], [300.0, 520.0, 880.0]
    frames = np.concatenate([scene(50 + i, n) for i, n in enumerate(lengths)])
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    encode_video(path, frames, FPS, tones(lengths, freqs), RATE)
    return path, lengths, freqs


def test_long_video_split_at_cuts_and_stride_with_own_frames_and_audio(long_video):
    path, lengths, freqs = long_video
    rows = run_clip([probe_row(path, "long")], max_duration=8, min_duration=2)
    *clips, parent = rows
    assert (
        parent["video_id"] == "long"
        and parent["status"] == FILTERED
        and "split into 4 clips" in parent["error"]
    )
    assert [r["video_id"] for r in clips] == [f"long-c{k}" for k in range(4)]
    assert all(r["status"] == OK and r["parent_id"] == "long" for r in clips)
    # cuts at 5 s and 16 s; the 11 s scene is split at the 8 s stride: 5-13, 13-16
    expected = [(0, 5), (5, 13), (13, 16), (16, 20)]
    scene_of = [0, 1, 1, 2]
    for r, (s, e), k in zip(clips, expected, scene_of):
        assert abs(r["start"] - s) <= 2 / FPS and abs(r["end"] - e) <= 2 / FPS, (r["start"], r["end"])
        assert r["duration"] == pytest.approx(r["end"] - r["start"])
        assert len(r["frames"]) == 8 and all(r["start"] <= t < r["end"] for t in r["frame_times"])
        assert r["frame_times"] == sorted(r["frame_times"])
        segment = (r["end"] - r["start"]) / 8
        assert all(
            abs(t - (r["start"] + (i + 0.5) * segment)) <= 1.01 / FPS for i, t in enumerate(r["frame_times"])
        )
        # each frame is the source frame at its time (scaled to the clip's short side)
        src = np.concatenate([scene(50 + i, n) for i, n in enumerate(lengths)])
        for jpeg, t in zip(r["frames"], r["frame_times"]):
            img = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float32)
            assert min(img.shape[:2]) == 64
            ref = np.asarray(Image.fromarray(src[round(t * FPS)]).resize(img.shape[1::-1]), dtype=np.float32)
            assert np.abs(img - ref).mean() < 12
        samples, rate = decode_flac(r["audio"])
        assert rate == 16_000 and abs(len(samples) / rate - (r["end"] - r["start"])) < 0.05
        assert abs(dominant_hz(samples[400:-400], rate) - freqs[k]) < 10, (r["video_id"], freqs[k])


def test_long_video_without_cuts_split_at_fixed_stride(tmp_path):
    encode_video(tmp_path / "one.mp4", scene(60, 25 * FPS), FPS)
    *clips, parent = run_clip([probe_row(tmp_path / "one.mp4", "one")], max_duration=10, min_duration=2)
    assert [(round(r["start"], 1), round(r["end"], 1)) for r in clips] == [(0, 10), (10, 20), (20, 25)]
    assert parent["status"] == FILTERED and not any(
        r["has_audio"] or r["audio"] for r in clips
    )  # no audio track
    # a tail shorter than min_duration is dropped
    *clips, _ = run_clip([probe_row(tmp_path / "one.mp4", "one")], max_duration=12, min_duration=2)
    assert [(round(r["start"], 1), round(r["end"], 1)) for r in clips] == [(0, 12), (12, 24)]


def test_audio_shorter_than_a_second_is_kept(tmp_path):
    """The resampler hands out one-second frames: under a second of audio comes out only when it is
    flushed, which the clip stage once skipped (``has_audio`` false)."""
    t = np.arange(round(0.6 * RATE)) / RATE
    sound = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    encode_video(tmp_path / "short-sound.mp4", scene(61, 20 * FPS), FPS, sound)
    first, *others, parent = run_clip([probe_row(tmp_path / "short-sound.mp4", "s")], max_duration=8)
    assert parent["status"] == FILTERED and first["has_audio"]
    samples, rate = decode_flac(first["audio"])
    assert abs(len(samples) / rate - 0.6) < 0.05 and abs(dominant_hz(samples[400:-400], rate) - 440) < 10
    assert others and not any(r["has_audio"] for r in others)  # no sound after 0.6 s


def test_every_clip_lasts_min_to_max_and_starts_at_a_cut_or_a_stride(cut_videos):
    path, cuts = cut_videos[0]
    *clips, parent = run_clip([probe_row(path, "v")], max_duration=1.5, min_duration=1.0)
    assert parent["clips"] == len(clips) > 5
    starts = [0, *cuts]
    for r in clips:
        assert 1.0 - 1e-6 <= r["end"] - r["start"] <= 1.5 + 1e-6, (r["start"], r["end"])
        begin = round(r["start"] * FPS)
        scene_start = max(s for s in starts if s <= begin + 2)
        assert abs(begin - scene_start) <= 2 or (begin - scene_start) % round(1.5 * FPS) <= 2, (begin, starts)
    assert len({r["video_id"] for r in clips}) == len(clips)


def test_short_video_passes_through_unchanged_and_bad_media_fails(good_videos):
    row = probe_row(good_videos[0], "short")
    (out,) = run_clip([row])
    assert out["video_id"] == out["parent_id"] == "short" and out["status"] == OK
    assert out["frames"] == row["frames"] and out["audio"] == row["audio"] and out["start"] == 0.0
    assert out["end"] == row["duration"] and out["motion"] > 0
    broken = {**row, "video_id": "gone", "media": "/nonexistent/x.mp4"}
    (bad,) = run_clip([broken])
    assert bad["status"] == FAILED and "not found" in bad["error"]


def test_motion_orders_static_slow_fast_and_min_motion_filters(tmp_path):
    still = np.repeat(scene(70, 1), 30, axis=0)
    fast = render_frames(CONCEPTS[0], n_frames=30, size=SIZE, seed=70)  # crosses the frame in 2 s
    slow = render_frames(CONCEPTS[0], n_frames=300, size=SIZE, seed=70)[:30]  # a tenth of that
    rows = []
    for name, frames in (("still", still), ("slow", slow), ("fast", fast)):
        encode_video(tmp_path / f"{name}.mp4", frames, FPS)
        rows.append(probe_row(tmp_path / f"{name}.mp4", name))
    motion = {r["video_id"]: r["motion"] for r in run_clip(rows)}
    assert motion["still"] < motion["slow"] < motion["fast"], motion
    # a hard cut inside a short video is not motion: two still shots score as still
    two_shots = np.concatenate([still[:15], np.repeat(scene(71, 1), 15, axis=0)])
    encode_video(tmp_path / "two.mp4", two_shots, FPS)
    (two,) = run_clip([probe_row(tmp_path / "two.mp4", "two")])
    assert two["motion"] < motion["slow"], (two["motion"], motion)
    threshold = (motion["still"] + motion["slow"]) / 2
    out = {r["video_id"]: r for r in run_clip(rows, min_motion=threshold)}
    assert out["still"]["status"] == FILTERED and f"motion {motion['still']:.3f}" in out["still"]["error"]
    assert out["slow"]["status"] == out["fast"]["status"] == OK


def test_clip_ids_stay_valid_for_long_parents_and_config_is_checked():
    assert clip_id("youtube-abc", 3) == "youtube-abc-c3"
    long_ids = {clip_id("x" * 60 + tail, 12) for tail in ("aaaa", "aaab")}
    assert len(long_ids) == 2 and all(len(i) <= 64 for i in long_ids)
    with pytest.raises(ValueError, match="min_duration"):
        ClipConfig(min_duration=30, max_duration=20)


def test_clip_runs_only_when_listed():
    assert "clip" not in load_config(None).run.stages  # VIDAL's recipe stays the default
    assert "clip" not in load_config(REPO / "configs" / "vidal.yaml").run.stages
    assert load_config(None, ["run.stages=[probe, clip, download]"]).run.stages == [
        "download",
        "probe",
        "clip",
    ]


@pytest.mark.slow
def test_clip_through_the_runner_is_resumable(tmp_path, ray_local, long_video, good_videos):
    from pipeline.runner import run_pipeline, run_stage

    inputs = write_list(
        tmp_path / "videos.csv",
        [{"path": str(long_video[0]), "title": "long"}, {"path": str(good_videos[1]), "title": "short"}],
    )
    cfg = load_config(
        REPO / "configs" / "demo.yaml",
        [
            f"run.root={tmp_path / 'root'}",
            "run.stages=[discover, download, probe, clip]",
            f"discover.inputs=[{inputs}]",
            "run.demo_media=",
            "probe.max_duration=null",
            "clip.max_duration=8",
        ],
    )
    first = run_pipeline(cfg, ["discover", "download", "probe", "clip"])[-1]
    rows = [
        r for p in manifest.part_files(str(tmp_path / "root"), "clip") for r in pq.read_table(p).to_pylist()
    ]
    ok = [r for r in rows if r["status"] == OK]
    assert first.counts == {OK: 5, FAILED: 0, FILTERED: 1}, first.counts
    assert sorted(r["parent_id"] != r["video_id"] for r in ok) == [False, True, True, True, True]
    again = run_stage(cfg, "clip")
    assert again.rows_in == 0 and again.skipped == 6  # both inputs done: the parent is in by its own row
    # a run killed between two part writes left the parent's row without one of its clips
    parent = next(r for r in rows if r["clips"])
    assert parent["clips"] == 4 and parent["status"] == FILTERED
    lost = f"{parent['video_id']}-c2"
    manifest.drop_rows(
        str(tmp_path / "root"), "clip", lambda t: pc.equal(t["video_id"], lost), columns=("video_id",)
    )
    redo = run_stage(cfg, "clip")
    assert redo.rows_in == 5 and redo.totals == {OK: 5, FAILED: 0, FILTERED: 1}, redo
    ids = [
        r["video_id"]
        for p in manifest.part_files(str(tmp_path / "root"), "clip")
        for r in pq.read_table(p).to_pylist()
    ]
    assert sorted(ids) == sorted(r["video_id"] for r in rows) and len(set(ids)) == len(ids)
    wrong = load_config(
        REPO / "configs" / "demo.yaml",
        [f"run.root={tmp_path / 'root'}", "probe.max_duration=20", "clip.max_duration=20"],
    )
    with pytest.raises(Exception, match="probe.max_duration"):
        run_stage(wrong, "clip")
