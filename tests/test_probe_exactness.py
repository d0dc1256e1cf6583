"""The probe stage's frames and audio against an independent reference: a full PyAV decode of the same file.

The reference is what probe produced before its decode was made sparse and faster: every frame decoded,
the one at or after each segment centre converted by one swscale call to the target size
(``frame.reformat(width, height, "rgb24")``) and JPEG-encoded by Pillow at the stage's quality; audio
decoded packet by packet and resampled per frame to 16 kHz mono s16. The stage's output must match
within JPEG noise (PSNR above 40 dB on each of the 8 frames) and its audio sample for sample.
"""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from PIL import Image

from contracts.encodings import decode_flac
from pipeline.config import load_config
from pipeline.synthetic import CONCEPTS, make_clip
from stages.base import RunContext
from stages.probe import ProbeStage

NUM_FRAMES, SHORT_SIDE, QUALITY = 8, 256, 90


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """4 s 30 fps clips with moving content and audio: a keyframe every second, and a single keyframe."""
    out = tmp_path_factory.mktemp("exactness")
    paths = {}
    for name, gop, concept in (("gop30", 30, CONCEPTS[5]), ("single", 10_000, CONCEPTS[9])):
        paths[name] = out / f"{name}.mp4"
        make_clip(paths[name], concept, seconds=4.0, fps=30, size=(320, 240), seed=7, gop=gop)
    return paths


def reference_frames(path) -> tuple[list[float], list[np.ndarray], list[np.ndarray]]:
    """Times, decoded JPEGs of the frames at the 8 segment centres, and of the frames two steps later."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        tb = float(s.time_base)
        start, duration = (s.start_time or 0) * tb, s.duration * tb
        frames = sorted(c.decode(s), key=lambda f: f.pts)
    times = [f.pts * tb for f in frames]
    picks = []
    for i in range(NUM_FRAMES):
        centre = start + (i + 0.5) * duration / NUM_FRAMES
        picks.append(next((k for k, t in enumerate(times) if t >= centre), len(frames) - 1))

    def jpeg(frame: av.VideoFrame) -> np.ndarray:
        scale = SHORT_SIDE / min(frame.width, frame.height)
        rgb = frame.reformat(
            width=round(frame.width * scale), height=round(frame.height * scale), format="rgb24"
        ).to_ndarray()
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=QUALITY)
        return decode_jpeg(buf.getvalue())

    return (
        [times[k] for k in picks],
        [jpeg(frames[k]) for k in picks],
        [jpeg(frames[min(k + 2, len(frames) - 1)]) for k in picks],
    )


def reference_audio(path) -> np.ndarray:
    with av.open(str(path)) as c:
        a = c.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16_000)
        chunks = [
            r.to_ndarray().reshape(-1) for p in c.demux(a) for f in p.decode() for r in resampler.resample(f)
        ]
        chunks += [r.to_ndarray().reshape(-1) for r in resampler.resample(None)]
    return np.concatenate(chunks)


def decode_jpeg(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def probe_row(path, **overrides) -> dict:
    cfg = load_config(None, [f"probe.{k}={v}" for k, v in overrides.items()])
    return ProbeStage(cfg.probe, RunContext(root="/tmp/unused")).process_row(
        {"video_id": "v", "media": str(path)}
    )


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", ["gop30", "single"])
def test_frames_match_a_full_decode_within_jpeg_noise(clips, name, threads):
    times, ref, later = reference_frames(clips[name])
    row = probe_row(clips[name], decode_threads=threads, short_side=SHORT_SIDE, jpeg_quality=QUALITY)
    assert row["frame_times"] == pytest.approx(times, abs=1e-4)
    ours = [decode_jpeg(b) for b in row["frames"]]
    assert [o.shape for o in ours] == [r.shape for r in ref]
    for i, (o, r, n) in enumerate(zip(ours, ref, later)):
        assert psnr(o, r) > 40, f"frame {i}: {psnr(o, r):.1f} dB"
        # the threshold has teeth: two frames later (1/15 s of motion) is well below it
        assert psnr(n, r) < 37, f"frame {i}: two frames later is {psnr(n, r):.1f} dB from it"


@pytest.mark.parametrize("name", ["gop30", "single"])
def test_audio_is_sample_for_sample_the_per_frame_resample(clips, name):
    row = probe_row(clips[name])
    pcm, rate = decode_flac(row["audio"])
    ours = np.round(pcm * 32768).astype(np.int16)
    ref = reference_audio(clips[name])
    assert rate == 16_000
    assert len(ours) == len(ref) and np.array_equal(ours, ref)


def random_frame(width: int, height: int, pix_fmt: str, rng: np.random.Generator) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, pix_fmt)
    for plane in frame.planes:
        plane.update(rng.integers(0, 256, plane.buffer_size, dtype=np.uint8).tobytes())
    return frame


def test_frame_converter_is_byte_identical_to_one_rgb24_call():
    """The converter takes swscale's planar RGB output where ``planar_rgb_is_exact`` says it is the same
    bytes as packed RGB; on noise (every rounding shows) it must be, on both sides of the rule."""
    from av.video.reformatter import VideoReformatter

    from stages.media.decode import FrameConverter, planar_rgb_is_exact

    rng, reference = np.random.default_rng(3), VideoReformatter()
    sizes = [(1280, 720), (1920, 1080), (1080, 1920), (640, 480), (480, 270), (300, 258), (258, 300)]
    formats = ["yuv420p", "yuvj420p", "yuv422p", "yuv444p", "nv12"]
    planar = packed = 0
    for (w, h), pix_fmt in [(s, f) for s in sizes for f in formats]:
        frame = random_frame(w, h, pix_fmt, rng)
        for short_side in (256, 128, 257, 97):
            convert = FrameConverter(short_side)
            tw, th = convert.target_size(w, h)
            want = reference.reformat(frame, width=tw, height=th, format="rgb24", threads=1).to_ndarray()
            got = convert(frame)
            assert got.shape == want.shape and np.array_equal(got, want), (w, h, pix_fmt, short_side)
            if planar_rgb_is_exact(pix_fmt, tw, h, th):
                planar += 1
            else:
                packed += 1
    assert planar_rgb_is_exact("yuv420p", 455, 720, 256)  # 720p to short side 256 takes it
    assert planar > 30 and packed > 30, (planar, packed)  # both ways taken


def per_frame_resample(frames: list[av.AudioFrame], rate: int) -> np.ndarray:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    out = [r.to_ndarray().reshape(-1) for f in frames for r in resampler.resample(f)]
    out += [r.to_ndarray().reshape(-1) for r in resampler.resample(None)]
    return np.concatenate(out)


@pytest.mark.parametrize(
    "fmt, layout, in_rate, n_frames",
    [
        ("fltp", "stereo", 44_100, 100),
        ("s16", "stereo", 48_000, 33),
        ("flt", "mono", 8_000, 5),
        ("s32p", "mono", 22_050, 64),
    ],
)
def test_chunked_audio_is_the_per_frame_resample(fmt, layout, in_rate, n_frames):
    """``AudioTrack`` resamples decoded frames in chunks: the samples must be one call per frame's."""
    from stages.media.audio import AudioTrack

    rng, frames = np.random.default_rng(n_frames), []
    channels = 2 if layout == "stereo" else 1
    for i in range(n_frames):
        if fmt.endswith("p"):
            shape = (channels, 1024)
        else:
            shape = (1, 1024 * channels)
        data = rng.uniform(-0.8, 0.8, shape)
        if fmt.startswith("s16"):
            data = (data * 32767).astype(np.int16)
        elif fmt.startswith("s32"):
            data = (data * 2**31).astype(np.int32)
        else:
            data = data.astype(np.float32)
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
        frame.sample_rate, frame.pts = in_rate, i * 1024
        frames.append(frame)
    track = AudioTrack(16_000)
    for f in frames:
        track.add(f)
    got = track.finish()
    want = per_frame_resample(frames, 16_000)
    assert got is not None and got.dtype == np.int16 and np.array_equal(got, want)


def test_audio_under_a_second_is_kept(tmp_path):
    """The one-second output frames hold everything back until the flush: a 0.5 s track must survive."""
    path = tmp_path / "short.mp4"
    make_clip(path, CONCEPTS[2], seconds=0.5, fps=30, size=(160, 120), seed=1)
    row = probe_row(path)
    assert row["has_audio"]
    pcm, _ = decode_flac(row["audio"])
    assert np.array_equal(np.round(pcm * 32768).astype(np.int16), reference_audio(path))
