"""model.preprocess: the Kaldi fbank against an independent numpy reference, audio chunking, and the
image/video/depth/infrared transforms on shard encodings and raw files."""

from __future__ import annotations

import io
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import av
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from model import preprocess as pp

CLIP_MEAN = np.array(pp.CLIP_MEAN)
CLIP_STD = np.array(pp.CLIP_STD)


# -- fbank: an independent numpy reference ---------------------------------------------------
def reference_fbank(signal: np.ndarray, sr: int, bins: int) -> np.ndarray:
    """Kaldi fbank written from Kaldi's description, frame by frame, in float64.

    Filters are built with np.interp in the mel domain (a different construction from the
    min(up, down) slopes in model.preprocess). librosa's mel filters are not used: they are
    triangles in Hz between mel-spaced edges, while Kaldi's are triangles in mel.
    """
    length, shift, nfft = 400, 160, 512
    n = np.arange(length)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / (length - 1))

    def mel(f: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)

    edges = np.linspace(mel(20.0), mel(sr / 2), bins + 2)
    bin_mels = mel(np.arange(nfft // 2 + 1) * sr / nfft)
    filters = np.stack(
        [np.interp(bin_mels, edges[m : m + 3], [0.0, 1.0, 0.0], left=0.0, right=0.0) for m in range(bins)]
    )
    filters[:, -1] = 0.0  # Kaldi's filters stop below the Nyquist bin
    rows = []
    for start in range(0, len(signal) - length + 1, shift):
        frame = signal[start : start + length].astype(np.float64)
        frame = frame - frame.mean()
        frame = np.concatenate([[frame[0] * (1 - 0.97)], frame[1:] - 0.97 * frame[:-1]])
        spectrum = np.abs(np.fft.rfft(frame * window, nfft)) ** 2
        rows.append(np.log(np.maximum(filters @ spectrum, np.finfo(np.float32).eps)))
    return np.array(rows)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one intra-op thread beats two (thread hand-offs cost more than the math)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_kaldi_fbank_matches_independent_reference() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(int(1.3 * 16000)) / 16000
    signal = 0.3 * np.sin(2 * np.pi * (200 + 1500 * t) * t) + 0.05 * rng.standard_normal(t.size)
    ours = pp.kaldi_fbank(torch.from_numpy(signal.astype(np.float32)), 16000, 126).numpy()
    ref = reference_fbank(signal.astype(np.float32), 16000, 126)
    assert ours.shape == ref.shape == (1 + (t.size - 400) // 160, 126)
    # float32 vs float64 rounding: measured max 3e-4 in log-mel; 1e-3 (a 0.1% energy difference) is
    # far below what a wrong choice gives (a periodic instead of symmetric window: 0.29).
    np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=0)


def test_kaldi_fbank_tone_lands_in_its_mel_bin() -> None:
    t = np.arange(16000) / 16000
    fbank = pp.kaldi_fbank(torch.from_numpy(np.sin(2 * np.pi * 1000 * t).astype(np.float32)))
    edges = np.linspace(1127 * np.log1p(20 / 700), 1127 * np.log1p(8000 / 700), 128)
    expected = int(np.argmin(np.abs(edges[1:-1] - 1127 * np.log1p(1000 / 700))))
    assert abs(int(fbank.mean(0).argmax()) - expected) <= 1


# -- audio chunking ---------------------------------------------------------------------------
def ramp(frames: int, bins: int = 4) -> torch.Tensor:
    """fbank whose row t is t everywhere: chunk contents reveal their start frame."""
    return torch.arange(frames, dtype=torch.float32)[:, None].repeat(1, bins)


def test_long_clip_takes_one_chunk_from_each_third() -> None:
    fbank = ramp(3000)
    thirds = np.array_split(np.arange(3000 - 1036 + 1), 3)
    for train, seed in ((False, 0), (True, 1), (True, 2)):
        out = pp.chunk_fbank(fbank, 1036, train=train, generator=torch.Generator().manual_seed(seed))
        assert out.shape == (3, 4, 1036)
        for chunk, third in zip(out, thirds, strict=True):
            start = int(chunk[0, 0])
            assert third[0] <= start <= third[-1]
            assert torch.equal(chunk[0], torch.arange(start, start + 1036, dtype=torch.float32))
    starts = {
        tuple(pp.chunk_fbank(fbank, 1036, True, torch.Generator().manual_seed(s))[:, 0, 0].tolist())
        for s in range(5)
    }
    assert len(starts) > 1  # training picks at random


def test_short_clip_is_repeated_then_padded_in_three_equal_channels() -> None:
    out = pp.chunk_fbank(ramp(300) + 1, 1036)
    assert out.shape == (3, 4, 1036)
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    row = out[0, 0]
    expected = torch.cat([torch.arange(1, 301.0)] * 3 + [torch.zeros(136)])
    assert torch.equal(row, expected)


def flac_bytes(signal: np.ndarray, sr: int = 16000) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, signal, sr, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def test_flac_decoded_by_pyav_and_normalised() -> None:
    t = np.arange(2 * 16000) / 16000
    signal = (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    data = flac_bytes(signal)
    decoded = pp.decode_audio(data)
    assert decoded.shape == (signal.size,)
    np.testing.assert_allclose(decoded.numpy(), signal, atol=1 / 32768 + 1e-6)
    out = pp.audio_input(data)
    assert out.shape == (3, 126, 1036) and out.dtype == torch.float32
    fbank = pp.kaldi_fbank(decoded - decoded.mean())
    np.testing.assert_allclose(
        out[0, :, : fbank.shape[0]].T, (fbank + 4.2677393) / (2 * 4.5689974), atol=1e-5
    )


def test_wav_file_is_resampled_to_16k(tmp_path) -> None:
    t = np.arange(44100) / 44100
    path = tmp_path / "tone.wav"
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 44100)
    decoded = pp.decode_audio(path)
    assert abs(decoded.numel() - 16000) <= 160
    assert pp.audio_input(path).shape == (3, 126, 1036)


# -- video, depth, infrared -------------------------------------------------------------------
def jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def unnormalise(x: torch.Tensor) -> np.ndarray:
    return x.numpy() * CLIP_STD[:, None, None] + CLIP_MEAN[:, None, None]


def test_video_frames_eval_and_train_shapes_and_alignment() -> None:
    left_red = np.zeros((96, 128, 3), np.uint8)
    left_red[:, :64] = (255, 0, 0)
    left_red[:, 64:] = (0, 0, 255)
    frames = [jpeg(left_red)] * 8
    clip = pp.video_input(frames, image_size=64)
    assert clip.shape == (8, 3, 64, 64) and clip.dtype == torch.float32
    rgb = unnormalise(clip[0])
    assert rgb[0, 32, 5] > 0.9 and rgb[2, 32, -5] > 0.9  # eval: centre crop, no flip
    flips = set()
    for seed in range(8):
        out = pp.video_input(frames, image_size=64, train=True, generator=torch.Generator().manual_seed(seed))
        assert out.shape == (8, 3, 64, 64)
        assert torch.equal(out[0], out[-1])  # one crop and flip for the whole clip
        flips.add(bool(unnormalise(out[0])[2, 32, 2] > 0.9))
    assert flips == {True, False}


def write_mp4(path, frames: int = 30, size: int = 64) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.full((size, size, 3), int(i * 255 / (frames - 1)), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_mp4_samples_eight_uniform_frames(tmp_path) -> None:
    path = tmp_path / "ramp.mp4"
    write_mp4(path)
    frames = pp.sample_video_frames(path, 8)
    brightness = np.array([f.mean() for f in frames])
    expected = np.linspace(0, 29, 8).round() * 255 / 29
    np.testing.assert_allclose(brightness, expected, atol=6)
    assert pp.video_input(path, image_size=32).shape == (8, 3, 32, 32)


def png16(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def test_depth_millimetres_to_clipped_normalised_metres() -> None:
    depth = np.zeros((32, 32), np.uint16)
    depth[:, 8:16] = 5000  # 5 m -> 0.5
    depth[:, 16:24] = 10000  # at the clip: 1.0
    depth[:, 24:] = 3  # 3 mm -> clipped to 0.01 m -> 0.001
    out = pp.depth_input(png16(depth), image_size=32)
    assert out.shape == (3, 32, 32)
    values = unnormalise(out)
    for channel in values:  # the same depth in all 3 channels
        np.testing.assert_allclose(channel[:, 10:14], 0.5, atol=1e-4)
        np.testing.assert_allclose(channel[:, 18:22], 1.0, atol=1e-4)
        np.testing.assert_allclose(channel[:, 2:6], 0.001, atol=1e-4)
        np.testing.assert_allclose(channel[:, 26:30], 0.001, atol=1e-4)
    assert pp.depth_input(png16(depth), image_size=16).shape == (3, 16, 16)


def test_infrared_grey_jpeg_read_as_rgb(tmp_path) -> None:
    grey = np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (40, 1))
    buf = io.BytesIO()
    Image.fromarray(grey, mode="L").save(buf, format="JPEG", quality=95)
    out = pp.infrared_input(buf.getvalue(), image_size=32)
    assert out.shape == (3, 32, 32)
    values = unnormalise(out)
    np.testing.assert_allclose(values[0], values[1], atol=1e-5)
    np.testing.assert_allclose(values[1], values[2], atol=1e-5)
    path = tmp_path / "ir.jpg"
    path.write_bytes(buf.getvalue())
    assert torch.allclose(pp.preprocess("infrared", path, image_size=32), out)


def test_depth_and_infrared_reject_frame_lists() -> None:
    with pytest.raises(TypeError, match="pick a frame"):
        pp.preprocess("depth", [b"x", b"y"], image_size=32)
