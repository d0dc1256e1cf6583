"""The probe stage on real encoded files: sampling positions, audio, filters and bad inputs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from contracts.encodings import decode_flac
from pipeline.config import load_config
from pipeline.synthetic import CONCEPTS, encode_video, make_clip, render_frames
from stages.base import RunContext
from stages.media.decode import probe_file, target_times
from stages.probe import ProbeStage


def make_stage(**overrides) -> ProbeStage:
    cfg = load_config(None, [f"probe.{k}={v}" for k, v in overrides.items()])
    return ProbeStage(cfg.probe, RunContext(root="/tmp/unused"))


def counter_clip(path, n_frames: int, fps: int, gop: int | None) -> None:
    """Frames whose mean brightness encodes their index, so a sampled frame reveals which it is."""
    frames = np.zeros((n_frames, 96, 128, 3), np.uint8)
    for i in range(n_frames):
        frames[i] = int(i * 250 / max(n_frames - 1, 1))
    encode_video(path, frames, fps, gop=gop)


@pytest.mark.parametrize("gop", [None, 12, 1000])
def test_frames_sampled_at_segment_centres(tmp_path, gop):
    path = tmp_path / "counter.mp4"
    counter_clip(path, n_frames=120, fps=30, gop=gop)
    p = probe_file(str(path), num_frames=8, short_side=64)
    assert len(p.frames) == 8 and len(p.frame_times) == 8
    expected_t = target_times(0.0, 4.0, 8)
    # each kept frame is the first at or after its target time
    for t_kept, t_target in zip(p.frame_times, expected_t):
        assert t_target <= t_kept < t_target + 1 / 30 + 1e-6
    # the pixels are those of the frame at that time (brightness encodes the index)
    for frame, t in zip(p.frames, p.frame_times):
        idx = round(t * 30)
        assert abs(frame.mean() - idx * 250 / 119) < 3
    assert min(p.frames[0].shape[:2]) == 64


@pytest.mark.parametrize("threads", [1, 2])
def test_planned_decode_equals_full_decode_and_decodes_less(tmp_path, threads):
    path = tmp_path / "gop.mp4"
    frames = render_frames(CONCEPTS[3], n_frames=150, size=(192, 128), seed=3)
    encode_video(path, frames, 30, gop=60)
    planned = probe_file(str(path), planned=True, threads=threads)
    full = probe_file(str(path), planned=False, threads=threads)
    assert planned.frame_times == full.frame_times
    for a, b in zip(planned.frames, full.frames):
        assert np.array_equal(a, b)
    assert planned.decoded_frames < full.decoded_frames == 150


def test_probe_row_outputs_jpeg_frames_and_flac_audio(good_videos):
    stage = make_stage()
    row = stage.process_row({"video_id": "v", "media": str(good_videos[0])})
    assert row["duration"] == pytest.approx(2.0, abs=0.1)
    assert row["fps"] == pytest.approx(15.0)
    assert (row["width"], row["height"]) == (160, 120)
    assert row["vcodec"] == "h264" and row["acodec"] == "aac"
    imgs = [Image.open(io.BytesIO(b)) for b in row["frames"]]
    assert len(imgs) == 8 and all(im.format == "JPEG" and min(im.size) == 256 for im in imgs)
    assert row["has_audio"] is True
    pcm, rate = decode_flac(row["audio"])
    assert rate == 16_000 and len(pcm) == pytest.approx(32_000, rel=0.05)
    # the clip's tone is at the colour's pitch: the spectrum peak says so
    spectrum = np.abs(np.fft.rfft(pcm[:16000]))
    from pipeline.synthetic import TONE_HZ

    assert abs(np.argmax(spectrum) - TONE_HZ[CONCEPTS[0].colour]) < 5


def test_video_without_audio_is_ok_without_audio(bad_inputs):
    row = make_stage().process_row({"video_id": "v", "media": str(bad_inputs["no_audio"])})
    assert row["has_audio"] is False and row["audio"] is None and len(row["frames"]) == 8


def test_rotation_is_applied_as_ffmpeg_displays_it(tmp_path):
    import subprocess

    import imageio_ffmpeg

    frames = np.zeros((10, 96, 160, 3), np.uint8)
    frames[:, :24, :40] = 255  # a white marker in the top-left corner
    src, rotated = tmp_path / "plain.mp4", tmp_path / "rotated.mp4"
    encode_video(src, frames, 10)
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run(
        [
            ffmpeg,
            "-y",
            "-loglevel",
            "error",
            "-display_rotation:v:0",
            "90",
            "-i",
            str(src),
            "-c",
            "copy",
            str(rotated),
        ],
        check=True,
    )
    p = probe_file(str(rotated), short_side=96)
    assert p.rotation % 360 in (90, 270)
    assert (p.width, p.height) == (96, 160)
    # ffmpeg's own autorotated decode of the same file is the reference orientation
    ref = subprocess.run(
        [
            ffmpeg,
            "-loglevel",
            "error",
            "-i",
            str(rotated),
            "-frames:v",
            "1",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ],
        check=True,
        capture_output=True,
    ).stdout
    ref_img = np.frombuffer(ref, np.uint8).reshape(160, 96, 3)
    ours = p.frames[0]
    assert ours.shape == ref_img.shape
    assert np.abs(ours.astype(int) - ref_img).mean() < 8


@pytest.mark.parametrize(
    "name, status, reason",
    [
        ("truncated", "failed", ""),
        ("zero_bytes", "failed", ""),
        ("not_video", "failed", "not a readable media file"),
        ("audio_only", "failed", "no video stream (audio-only file)"),
        ("tiny_resolution", "filtered", "below min_short_side"),
        ("huge_resolution", "filtered", "above max_long_side"),
        ("missing", "failed", "not found"),
    ],
)
def test_bad_inputs_become_rows_with_reasons(bad_inputs, name, status, reason):
    stage = make_stage()
    out = stage.process(
        stage.rows_to_table([]).__class__.from_pylist([{"video_id": name, "media": str(bad_inputs[name])}])
    )
    row = out.to_pylist()[0]
    assert row["status"] == status, row
    assert reason in row["error"] and "\n" not in row["error"]


def test_duration_filters(good_videos):
    short = make_stage(max_duration=1.0).process_rows([{"video_id": "a", "media": str(good_videos[0])}])
    row = next(short)
    assert row["status"] == "filtered" and "above max_duration" in row["error"]
    long = make_stage(min_duration=5).process_rows([{"video_id": "a", "media": str(good_videos[0])}])
    assert next(long)["error"].startswith("duration 2.00s below min_duration")


def test_short_video_with_fewer_frames_than_samples(tmp_path):
    path = tmp_path / "three.mp4"
    make_clip(path, CONCEPTS[4], seconds=0.3, fps=10, audio=False)
    p = probe_file(str(path))
    assert len(p.frames) == 8  # repeated frames: every sample point maps to a real frame
    assert len(set(p.frame_times)) <= 3
