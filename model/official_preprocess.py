"""``preprocess: languagebind``: the official processors (``languagebind/*/processing_*.py``), reproduced.

vidal's own transforms (``model.preprocess``) stay the default: they are what its shards were made for
and what its towers train on. This mode exists so that released weights see exactly the inputs they
were trained and evaluated with. Each difference, and which side does what:

=================  ======================================  ==============================================
step               official (this module)                  vidal's own mode
=================  ======================================  ==============================================
video frames       ``linspace(0, n-1, T)`` truncated to    the same spacing, rounded; frame count from
                   int, over every decoded frame (decord)  the stream's metadata
video resize       /255, CLIP mean/std, *then* short side  short side S bicubic with antialiasing on
                   224 bilinear without antialiasing       uint8, then /255 and mean/std
                   (pytorchvideo ``ShortSideScale``)
video crop/flip    centre crop; the official inference    centre crop, never flipped at inference;
                   transform also flips with p = 0.5       training: one random crop + flip per clip
                   (``RandomHorizontalFlipVideo``): off
                   here unless ``flip=True``, because a
                   coin toss per call makes embeddings
                   irreproducible; training: random crop
                   and a p = 0.5 flip, as data/process_*
audio reading      soundfile, all channels; mean removed   PyAV, downmixed to mono at 16 kHz
                   over all of them, then channel 0 only
                   (Kaldi fbank's channel choice)
audio resample     other rates through PyAV's resampler    PyAV's resampler
                   (the official uses torchaudio's sinc;
                   released checkpoints expect 16 kHz)
mel bins, norm     ``num_mel_bins`` of the checkpoint      126 bins, AudioSet mean/std
                   (112 Audio_FT, 126 Audio), its
                   ``audio_mean``/``audio_std``
short audio        fbank tiled and truncated to            fbank tiled whole, then zero-padded
                   ``target_length``
long audio         one chunk from each third of the        the middle of each third (random when
                   start offsets: the official picks at    training)
                   random even at inference; here the
                   first of each third (its commented
                   "fixed" choice), random when training
depth              mm / 1000, clip [0.01, max_depth],      the same scaling, bicubic *with* antialias
                   / max_depth, bicubic on the float map
                   without antialias, centre crop
thermal, image     the file as RGB (the official reads     RGB, bicubic with antialias on uint8
                   it as is and fails on grey images),
                   ToTensor, bicubic without antialias
=================  ======================================  ==============================================

"Without antialias" is what the official code computes in its pinned environment (torchvision 0.14,
whose tensor ``Resize`` did not antialias); ``antialias=True`` follows newer torchvision instead.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile
import torch
import torch.nn.functional as F
from PIL import Image

from model.model_config import TowerConfig
from model.official_config import AUDIO_DEFAULTS, DEPTH_DEFAULTS
from model.preprocess import CLIP_MEAN, CLIP_STD, decode_audio, decode_frames_at, kaldi_fbank, to_image

Source = bytes | str | Path


def _mean_std(ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (3,) + (1,) * (ndim - 1)
    return torch.tensor(CLIP_MEAN).view(shape), torch.tensor(CLIP_STD).view(shape)


def _short_side(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(int)``: the short side to ``size``, the long one ``int(size * long / short)``."""
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def _centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[..., top : top + size, left : left + size]


def _resize_bicubic(x: torch.Tensor, size: int, antialias: bool) -> torch.Tensor:
    """``[C, H, W]`` float -> short side ``size``, bicubic (torchvision's tensor ``Resize``)."""
    out = _short_side(*x.shape[-2:], size)
    return F.interpolate(x[None], size=out, mode="bicubic", align_corners=False, antialias=antialias)[0]


# -- video ------------------------------------------------------------------------------------
def decode_frames(path: str | Path, num_frames: int) -> list[np.ndarray]:
    """The official frame choice: ``linspace(0, n - 1, T)`` truncated to int over every decoded frame."""
    with av.open(str(path)) as container:
        total = sum(1 for _ in container.decode(video=0))
    if total == 0:
        raise ValueError(f"no decodable video frames in {path}")
    wanted = np.linspace(0, total - 1, num_frames, dtype=int)
    picked = decode_frames_at(path, wanted)
    return [picked[int(i)] for i in wanted]


def official_video(
    source: Sequence[Source | Image.Image | np.ndarray] | str | Path,
    num_frames: int = 8,
    size: int = 224,
    train: bool = False,
    flip: bool | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A video path or a list of frames -> ``[T, 3, S, S]`` as ``LanguageBindVideoProcessor`` makes it
    (the official tensor is ``[3, T, S, S]``). ``flip``: None = off at inference, p = 0.5 when training."""
    if isinstance(source, (str, Path)):
        frames = decode_frames(source, num_frames)
    else:
        frames = list(source)
        frames = [frames[int(i)] for i in np.linspace(0, len(frames) - 1, num_frames, dtype=int)]
    rgb = np.stack([np.asarray(to_image(f)) for f in frames])  # [T, H, W, 3]
    clip = torch.from_numpy(rgb).permute(3, 0, 1, 2).float() / 255.0  # [3, T, H, W]
    mean, std = _mean_std(4)
    clip = (clip - mean) / std
    h, w = clip.shape[-2:]
    # pytorchvideo's ShortSideScale: floor of the scaled long side, bilinear, no antialiasing
    out = (int(math.floor(h / w * size)), size) if w < h else (size, int(math.floor(w / h * size)))
    clip = F.interpolate(clip, size=out, mode="bilinear", align_corners=False)
    if train:
        h, w = clip.shape[-2:]
        top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
        clip = clip[..., top : top + size, left : left + size]
    else:
        clip = _centre_crop(clip, size)
    if flip is None:
        flip = train and bool(torch.rand(1, generator=generator).item() < 0.5)
    if flip:
        clip = clip.flip(-1)
    return clip.permute(1, 0, 2, 3).contiguous()


# -- audio ------------------------------------------------------------------------------------
def read_audio(source: Source | torch.Tensor | np.ndarray, sample_rate: int) -> torch.Tensor:
    """``[channels, samples]`` float32 at ``sample_rate``: soundfile for WAV/FLAC as the official loader
    (torchaudio's soundfile backend), PyAV's resampler for other rates or containers."""
    if isinstance(source, (torch.Tensor, np.ndarray)):
        wave = torch.as_tensor(source, dtype=torch.float32)
        return wave[None] if wave.ndim == 1 else wave
    try:
        data, rate = soundfile.read(
            io.BytesIO(source) if isinstance(source, bytes) else str(source), dtype="float32", always_2d=True
        )
    except soundfile.LibsndfileError:
        data, rate = None, None
    if data is None or rate != sample_rate:
        return decode_audio(source, sample_rate)[None]
    return torch.from_numpy(np.ascontiguousarray(data.T))


def official_audio(
    source: Source | torch.Tensor | np.ndarray,
    num_mel_bins: int = 112,
    target_length: int = 1036,
    mean: float = AUDIO_DEFAULTS["audio_mean"],
    std: float = AUDIO_DEFAULTS["audio_std"],
    sample_rate: int = 16000,
    train: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Audio -> ``[3, num_mel_bins, target_length]`` as ``LanguageBindAudioProcessor`` makes it."""
    wave = read_audio(source, sample_rate)
    wave = wave - wave.mean()
    if wave.shape[-1] < int(sample_rate * 0.025):
        raise ValueError(f"audio of {wave.shape[-1]} samples is shorter than one 25 ms fbank frame")
    mel = kaldi_fbank(wave[0], sample_rate, num_mel_bins)  # [frames, bins]; Kaldi reads channel 0
    total = mel.shape[0]
    if total > target_length:
        thirds = [list(r) or [0] for r in np.array_split(np.arange(total - target_length + 1), 3)]
        if train:
            starts = [r[int(torch.randint(len(r), (1,), generator=generator))] for r in thirds]
        else:
            starts = [r[0] for r in thirds]
        chunks = torch.stack([mel[int(s) : int(s) + target_length] for s in starts])
    else:
        if total < target_length:
            mel = mel.repeat(target_length // total + 1, 1)[:target_length]
        chunks = torch.stack([mel, mel, mel])
    return (chunks.transpose(1, 2) - mean) / (std * 2)


# -- depth, thermal, image ------------------------------------------------------------------
def official_depth(
    source: Source | np.ndarray,
    max_depth: float = DEPTH_DEFAULTS["max_depth"],
    size: int = 224,
    antialias: bool = False,
) -> torch.Tensor:
    """A depth map (16-bit PNG in mm, or an array) -> ``[3, S, S]`` as ``LanguageBindDepthProcessor``."""
    if isinstance(source, np.ndarray):
        depth = source.astype(np.float32)
    else:
        depth = np.asarray(to_image(source, mode=None), dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f"a depth map must have one channel (16-bit PNG in mm), got shape {depth.shape}")
    metres = torch.from_numpy(depth / 1000.0).clamp(min=0.01)
    metres = metres.clamp(max=max_depth) / max_depth if max_depth else metres / metres.max()
    x = _resize_bicubic(metres[None].repeat(3, 1, 1), size, antialias)
    mean, std = _mean_std(3)
    return (_centre_crop(x, size) - mean) / std


def official_image(
    source: Source | Image.Image | np.ndarray, size: int = 224, antialias: bool = False
) -> torch.Tensor:
    """An image (thermal or RGB) -> ``[3, S, S]`` as ``LanguageBind{Thermal,Image}Processor`` (read as RGB)."""
    x = torch.from_numpy(np.array(to_image(source))).permute(2, 0, 1).float() / 255.0
    x = _centre_crop(_resize_bicubic(x, size, antialias), size)
    mean, std = _mean_std(3)
    return (x - mean) / std


def official_preprocess(
    modality: str,
    source: Any,
    cfg: TowerConfig,
    train: bool = False,
    generator: torch.Generator | None = None,
    **options: Any,
) -> torch.Tensor:
    """One raw input -> the tower's tensor, with the settings of the checkpoint the tower came from."""
    if isinstance(source, torch.Tensor):
        return source
    vision = cfg.languagebind or {}
    size = cfg.image_size[0]
    if modality == "video":
        return official_video(source, cfg.num_frames, size, train, options.get("flip"), generator)
    if modality == "audio":
        bins, length = cfg.image_size
        return official_audio(
            source,
            bins,
            length,
            float(vision.get("audio_mean", AUDIO_DEFAULTS["audio_mean"])),
            float(vision.get("audio_std", AUDIO_DEFAULTS["audio_std"])),
            int(vision.get("audio_sample_rate", AUDIO_DEFAULTS["audio_sample_rate"])),
            train,
            generator,
        )
    antialias = bool(options.get("antialias", False))
    if modality == "depth":
        return official_depth(
            source, float(vision.get("max_depth", DEPTH_DEFAULTS["max_depth"])), size, antialias
        )
    if modality in ("infrared", "image"):
        return official_image(source, size, antialias)
    raise ValueError(f"unknown modality {modality!r}")
