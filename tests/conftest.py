"""Shared fixtures: a local Ray instance and generated videos, made once per test session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

import csv  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from pipeline.synthetic import CONCEPTS, make_clip  # noqa: E402


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance shared by the session (2 CPUs, no dashboard)."""
    import ray

    if not ray.is_initialized():
        # address="local": a fresh instance, never another process's cluster on the same machine
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}},
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def good_videos(tmp_path_factory) -> list[Path]:
    """Eight short H.264 + AAC clips of distinct concepts (2 s, 160x120, 15 fps)."""
    d = tmp_path_factory.mktemp("good_videos")
    paths = []
    for i, concept in enumerate(CONCEPTS[:8]):
        p = d / f"{concept.slug}.mp4"
        make_clip(p, concept, seconds=2.0, fps=15, size=(160, 120), seed=i)
        paths.append(p)
    return paths


def write_list(path: Path, rows: list[dict]) -> Path:
    """Write a CSV video list (the ``files`` input) with the union of the rows' columns."""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory, good_videos) -> dict[str, Path]:
    """Inputs each of which must end as a failed or filtered row, never a crash."""
    import numpy as np

    from pipeline.synthetic import encode_video, render_frames, tone

    d = tmp_path_factory.mktemp("bad_inputs")
    out: dict[str, Path] = {}
    whole = good_videos[0].read_bytes()
    (out_trunc := d / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    out["truncated"] = out_trunc
    (out_zero := d / "zero.mp4").write_bytes(b"")
    out["zero_bytes"] = out_zero
    (out_text := d / "notes.mp4").write_text("this is not a video\n" * 50)
    out["not_video"] = out_text
    # audio only: an AAC track in an MP4 container
    import av

    audio_only = d / "audio_only.m4a"
    with av.open(str(audio_only), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=44100, layout="mono")
        samples = tone(CONCEPTS[0], 1.0, 44100)
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="fltp", layout="mono")
        frame.sample_rate = 44100
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    out["audio_only"] = audio_only
    tiny = d / "tiny.mp4"
    encode_video(tiny, render_frames(CONCEPTS[1], n_frames=10, size=(16, 16), seed=0), 10)
    out["tiny_resolution"] = tiny
    wide = d / "huge.mp4"
    encode_video(wide, np.zeros((4, 64, 4400, 3), np.uint8), 10)
    out["huge_resolution"] = wide
    out["missing"] = d / "does-not-exist.mp4"
    silent = d / "silent.mp4"
    make_clip(silent, CONCEPTS[2], seconds=1.0, fps=10, size=(160, 120), audio=False)
    out["no_audio"] = silent  # valid: ok without audio
    return out


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto, its own process) on 127.0.0.1; see tests/s3server.py."""
    from tests.s3server import S3Server

    server = S3Server().start()
    yield server
    server.stop()
