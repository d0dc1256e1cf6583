"""Per-modality input transforms, shared by training, evaluation and inference.

Each function takes either the shard's encodings (JPEG frame bytes, uint16 PNG depth bytes, JPEG
infrared bytes, FLAC bytes) or a raw file path (``.mp4``, ``.wav``/``.flac``, depth PNG, IR image),
and returns a float32 tensor ready for the tower:

================  ==========================  =================================================
modality          output                      recipe (LanguageBind's)
================  ==========================  =================================================
video             ``[T, 3, S, S]``            short side S (bicubic); random crop + flip when
                                              training, centre crop otherwise; CLIP mean/std
audio             ``[3, 126, 1036]``          16 kHz, Kaldi fbank (126 bins); 3 chunks; AudioSet norm
depth             ``[3, S, S]``               mm -> m, clip [0.01, 10], / 10, 3 channels, resize,
                                              centre crop, CLIP mean/std
infrared          ``[3, S, S]``               as RGB, resize, centre crop, CLIP mean/std
================  ==========================  =================================================
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from contracts.encodings import decode_image
from contracts.shard_format import DEPTH_MAX_MM, NUM_FRAMES, SAMPLE_RATE

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
AUDIO_MEAN = -4.2677393  # AudioSet fbank statistics used by AST and LanguageBind
AUDIO_STD = 4.5689974
NUM_MEL_BINS = 126
TARGET_FRAMES = 1036  # fbank frames per chunk (10.36 s at a 10 ms shift)
DEPTH_MIN_M, DEPTH_MAX_M = 0.01, DEPTH_MAX_MM / 1000

Source = bytes | str | Path


# -- Kaldi fbank ------------------------------------------------------------------------------
def _mel(freq: torch.Tensor | float) -> torch.Tensor:
    return 1127.0 * torch.log1p(torch.as_tensor(freq, dtype=torch.float64) / 700.0)


def kaldi_mel_banks(
    num_mel_bins: int, fft_size: int, sample_rate: int, low_freq: float = 20.0
) -> torch.Tensor:
    """Kaldi's triangular filters ``[num_mel_bins, fft_size // 2 + 1]``: triangles linear in mel
    between ``low_freq`` and Nyquist, over the FFT bins below Nyquist (the Nyquist bin gets 0)."""
    bins = fft_size // 2
    mel_low, mel_high = _mel(low_freq), _mel(sample_rate / 2)
    step = (mel_high - mel_low) / (num_mel_bins + 1)
    left = mel_low + step * torch.arange(num_mel_bins, dtype=torch.float64)
    centre, right = left + step, left + 2 * step
    bin_mel = _mel(torch.arange(bins, dtype=torch.float64) * sample_rate / fft_size)
    up = (bin_mel[None] - left[:, None]) / (centre - left)[:, None]
    down = (right[:, None] - bin_mel[None]) / (right - centre)[:, None]
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1)).float()


def kaldi_fbank(
    waveform: torch.Tensor, sample_rate: int = SAMPLE_RATE, num_mel_bins: int = NUM_MEL_BINS
) -> torch.Tensor:
    """Log-mel filterbank as Kaldi computes it (torchaudio's ``compliance.kaldi.fbank`` with
    LanguageBind's arguments): 25 ms Hanning frames every 10 ms (``snip_edges``), DC removed,
    pre-emphasis 0.97, FFT padded to a power of two, power spectrum, Kaldi mel banks from 20 Hz to
    Nyquist, log floored at float32 epsilon; no dither, no energy. Returns ``[frames, num_mel_bins]``.
    """
    x = torch.as_tensor(waveform, dtype=torch.float32).reshape(-1)
    frame_length = int(sample_rate * 0.025)
    shift = int(sample_rate * 0.010)
    if x.numel() < frame_length:
        return torch.empty(0, num_mel_bins)
    frames = x.unfold(0, frame_length, shift)  # snip_edges: only whole frames
    frames = frames - frames.mean(dim=1, keepdim=True)
    # Pre-emphasis; Kaldi treats the sample before the first as the first itself.
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    frames = frames - 0.97 * previous
    frames = frames * torch.hann_window(frame_length, periodic=False, dtype=torch.float32)
    fft_size = 1 << (frame_length - 1).bit_length()
    power = torch.fft.rfft(frames, n=fft_size).abs().pow(2)
    mel = power @ kaldi_mel_banks(num_mel_bins, fft_size, sample_rate).T
    return torch.clamp(mel, min=torch.finfo(torch.float32).eps).log()


# -- audio ------------------------------------------------------------------------------------
def decode_audio(source: Source, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Mono float waveform in [-1, 1] at ``sample_rate`` from FLAC/WAV/any container bytes or a path."""
    handle = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    chunks = []
    with av.open(handle) as container:
        if not container.streams.audio:
            raise ValueError(f"no audio stream in {_describe(source)}")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        for frame in container.decode(audio=0):
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    if not chunks:
        raise ValueError(f"empty audio in {_describe(source)}")
    return torch.from_numpy(np.concatenate(chunks).astype(np.float32))


def chunk_fbank(
    fbank: torch.Tensor,
    target_frames: int = TARGET_FRAMES,
    train: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``[frames, bins]`` -> ``[3, bins, target_frames]``.

    Long: one chunk from each of the front, middle and back thirds of the possible start offsets
    (random when training, the middle of each third otherwise). Short: the fbank repeated whole
    as often as it fits, zero-padded to ``target_frames``, the same in all 3 channels.
    """
    n = fbank.shape[0]
    mel = fbank.T  # [bins, frames]
    if n > target_frames:
        starts = np.array_split(np.arange(n - target_frames + 1), 3)
        chunks = []
        for third in starts:
            third = third if len(third) else np.array([0])
            if train:
                pick = int(third[torch.randint(len(third), (1,), generator=generator).item()])
            else:
                pick = int(third[len(third) // 2])
            chunks.append(mel[:, pick : pick + target_frames])
        return torch.stack(chunks)
    if n < target_frames:
        mel = mel.repeat(1, max(1, target_frames // max(n, 1)))
        mel = torch.nn.functional.pad(mel, (0, target_frames - mel.shape[1]))
    return torch.stack([mel, mel, mel])


def audio_input(
    source: Source | torch.Tensor | np.ndarray,
    num_mel_bins: int = NUM_MEL_BINS,
    target_frames: int = TARGET_FRAMES,
    train: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Audio (bytes, path, or a 16 kHz waveform) -> normalised ``[3, num_mel_bins, target_frames]``."""
    if isinstance(source, (torch.Tensor, np.ndarray)):
        waveform = torch.as_tensor(source, dtype=torch.float32).reshape(-1)
    else:
        waveform = decode_audio(source)
    if waveform.numel() < int(SAMPLE_RATE * 0.025):  # shorter than one frame: pad to one
        waveform = torch.nn.functional.pad(waveform, (0, int(SAMPLE_RATE * 0.025) - waveform.numel()))
    fbank = kaldi_fbank(waveform - waveform.mean(), SAMPLE_RATE, num_mel_bins)
    chunks = chunk_fbank(fbank, target_frames, train, generator)
    return (chunks - AUDIO_MEAN) / (2 * AUDIO_STD)


# -- images and video -------------------------------------------------------------------------
def to_image(source: Source | Image.Image | np.ndarray, mode: str | None = "RGB") -> Image.Image:
    """A PIL image from encoded bytes (``contracts.encodings.decode_image``), a path, an array or an image;
    converted to ``mode`` if given."""
    if isinstance(source, bytes):
        return decode_image(source, mode)
    if isinstance(source, np.ndarray):
        image = Image.fromarray(source)
    elif isinstance(source, Image.Image):
        image = source
    else:
        image = Image.open(source)
        image.load()
    return image.convert(mode) if mode and image.mode != mode else image


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x - mean) / std


def _resize_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    x = TF.resize(x, [size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(x, [size, size])


def decode_frames_at(path: str | Path, wanted: np.ndarray) -> dict[int, np.ndarray]:
    """RGB frames of a video file at the decode-order indices ``wanted`` (ascending), decoding no further
    than the last; indices past the end of the stream are absent from the result."""
    picked: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                picked[index] = frame.to_ndarray(format="rgb24")
            if index >= wanted[-1]:
                break
    return picked


def sample_video_frames(path: str | Path, num_frames: int = NUM_FRAMES) -> list[np.ndarray]:
    """``num_frames`` RGB frames at uniformly spaced indices (first to last) of a video file (PyAV)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        total = stream.frames or sum(1 for _ in container.decode(video=0))
    wanted = np.linspace(0, max(total - 1, 0), num_frames).round().astype(int)
    picked = decode_frames_at(path, wanted)
    if not picked:
        raise ValueError(f"no decodable video frames in {path}")
    last = picked[max(picked)]  # metadata can overstate the frame count
    return [picked.get(int(i), last) for i in wanted]


def video_input(
    source: Sequence[Source | Image.Image | np.ndarray] | str | Path,
    image_size: int = 224,
    num_frames: int = NUM_FRAMES,
    train: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Frames (shard JPEG bytes, images, arrays) or a video path -> ``[T, 3, S, S]``.

    Training: one random crop and one flip decision for the whole clip (frames stay aligned).
    """
    if isinstance(source, (str, Path)):
        frames = sample_video_frames(source, num_frames)
    else:
        frames = list(source)
        if len(frames) > num_frames:  # uniformly subsample longer frame lists
            frames = [frames[int(i)] for i in np.linspace(0, len(frames) - 1, num_frames).round()]
    images = [np.asarray(to_image(f)) for f in frames]
    clip = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)  # [T, 3, H, W] uint8
    clip = TF.resize(clip, [image_size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    h, w = clip.shape[-2:]
    if train:
        top = int(torch.randint(h - image_size + 1, (1,), generator=generator))
        left = int(torch.randint(w - image_size + 1, (1,), generator=generator))
        clip = clip[..., top : top + image_size, left : left + image_size]
        if torch.rand(1, generator=generator).item() < 0.5:
            clip = clip.flip(-1)
    else:
        clip = TF.center_crop(clip, [image_size, image_size])
    return _normalise(clip.float() / 255.0)


def depth_input(source: Source | np.ndarray, image_size: int = 224) -> torch.Tensor:
    """A depth map (uint16 PNG bytes/path, or an array, in millimetres) -> ``[3, S, S]``."""
    if isinstance(source, np.ndarray):
        millimetres = source.astype(np.float32)
    else:
        millimetres = np.asarray(to_image(source, mode=None), dtype=np.float32)
    if millimetres.ndim == 3:  # an RGB-encoded depth image: take one channel
        millimetres = millimetres[..., 0]
    metres = torch.from_numpy(millimetres / 1000.0)
    depth = metres.clamp(DEPTH_MIN_M, DEPTH_MAX_M) / DEPTH_MAX_M
    depth = _resize_crop(depth[None].repeat(3, 1, 1), image_size)
    return _normalise(depth)


def infrared_input(source: Source | Image.Image | np.ndarray, image_size: int = 224) -> torch.Tensor:
    """A thermal infrared image (8-bit, read as RGB) -> ``[3, S, S]``."""
    image = torch.from_numpy(np.array(to_image(source))).permute(2, 0, 1)
    return _normalise(_resize_crop(image, image_size).float() / 255.0)


def preprocess(
    modality: str,
    source: Any,
    *,
    image_size: int | tuple[int, int] = 224,
    num_frames: int = NUM_FRAMES,
    train: bool = False,
    generator: torch.Generator | None = None,
    mode: str = "vidal",
    tower: Any = None,
) -> torch.Tensor:
    """Dispatch to the modality's transform; a tensor passes through unchanged (already prepared).

    For audio, ``image_size`` is the tower's ``(mel bins, frames)``. ``mode="languagebind"`` with the
    tower's ``TowerConfig`` as ``tower`` runs the official processors instead (``model.official_preprocess``).
    """
    if isinstance(source, torch.Tensor):
        return source
    if mode == "languagebind":
        from model.official_preprocess import official_preprocess

        if tower is None:
            raise ValueError("preprocess mode 'languagebind' needs the tower's config (tower=...)")
        return official_preprocess(modality, source, tower, train=train, generator=generator)
    if mode != "vidal":
        raise ValueError(f"unknown preprocess mode {mode!r}; choose vidal or languagebind")
    size = image_size if isinstance(image_size, int) else image_size[0]
    if modality == "video":
        return video_input(source, size, num_frames, train, generator)
    if modality == "audio":
        bins, frames = (image_size, TARGET_FRAMES) if isinstance(image_size, int) else image_size
        return audio_input(source, bins, frames, train, generator)
    if isinstance(source, (list, tuple)):
        raise TypeError(f"{modality} takes one image; pick a frame from the shard's {NUM_FRAMES} first")
    if modality == "depth":
        return depth_input(source, size)
    if modality in (
        "infrared",
        "image",
    ):  # an image tower (released LanguageBind_Image) reads RGB the same way
        return infrared_input(source, size)
    raise ValueError(f"unknown modality {modality!r}")


def _describe(source: Any) -> str:
    return f"{len(source)} bytes" if isinstance(source, bytes) else str(source)


__all__ = [
    "audio_input",
    "chunk_fbank",
    "decode_audio",
    "depth_input",
    "infrared_input",
    "kaldi_fbank",
    "kaldi_mel_banks",
    "preprocess",
    "sample_video_frames",
    "video_input",
]
