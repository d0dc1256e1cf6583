"""``open_media`` skips deblocking in the pictures FFmpeg decodes while opening: the streams' facts and
every decoded frame must be those of a plain ``av.open``, across codecs and containers."""

from __future__ import annotations

import hashlib

import av
import numpy as np
import pytest

from stages.media.decode import open_media, stream_facts

CASES = [  # file name, container format, video codec, with audio
    ("h264.mp4", "mp4", "libx264", True),
    ("h264.mkv", "matroska", "libx264", True),
    ("h264.ts", "mpegts", "libx264", False),
    ("hevc.mp4", "mp4", "libx265", False),
    ("vp9.webm", "webm", "libvpx-vp9", False),
    ("mpeg4.avi", "avi", "mpeg4", False),
]


def encode(path, fmt: str, codec: str, audio: bool, n: int = 24, size=(176, 144)) -> None:
    rng = np.random.default_rng(5)
    w, h = size
    with av.open(str(path), "w", format=fmt) as out:
        vs = out.add_stream(codec, rate=24)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        a_s = out.add_stream("aac", rate=44_100) if audio else None
        for i in range(n):
            img = np.full((h, w, 3), 60, np.uint8)
            img[:, (i * 6) % w : (i * 6) % w + 24] = 230
            img += rng.integers(0, 20, img.shape, dtype=np.uint8)  # texture for the deblocking to touch
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
        if a_s is not None:
            for k in range(0, 44_100 * n // 24, 1024):
                af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                af.sample_rate, af.pts = 44_100, k
                for p in a_s.encode(af):
                    out.mux(p)
            for p in a_s.encode(None):
                out.mux(p)


def snapshot(container) -> tuple:
    vs = container.streams.video[0]
    cc = vs.codec_context
    params = (cc.name, cc.width, cc.height, cc.pix_fmt, cc.has_b_frames, vs.average_rate, vs.time_base)
    params += (vs.duration, vs.start_time, vs.frames, container.duration, container.start_time)
    frames = [
        (f.pts, hashlib.sha1(b"".join(bytes(p) for p in f.planes)).hexdigest()) for f in container.decode(vs)
    ]
    return stream_facts(container), params, frames


@pytest.mark.parametrize("name, fmt, codec, audio", CASES, ids=[c[0] for c in CASES])
def test_open_media_learns_and_decodes_what_a_plain_open_does(tmp_path, name, fmt, codec, audio):
    path = tmp_path / name
    encode(path, fmt, codec, audio)
    with av.open(str(path), metadata_errors="ignore") as plain:
        want = snapshot(plain)
    with open_media(str(path)) as ours:
        got = snapshot(ours)
    assert len(got[2]) == 24
    assert got == want
    with open(path, "rb") as f, open_media(f) as ours:  # a stream (remote inputs) the same
        assert snapshot(ours) == want
