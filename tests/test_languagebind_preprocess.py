"""``preprocess: languagebind`` against references written from the official processors.

The references follow ``languagebind/*/processing_*.py`` step by step with the libraries the official code
uses where they are installed (cv2 for depth, PIL + torchvision's v1 transforms for images, torchvision's
video transforms), PyAV standing in for decord (every frame decoded), soundfile for torchaudio's
soundfile backend, and vidal's Kaldi fbank (checked against its own independent reference in
tests/test_model_preprocess.py) for torchaudio's.
"""

from __future__ import annotations

import math
import warnings

import av
import cv2
import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

with warnings.catch_warnings():  # torchvision keeps the video transforms the official code uses, deprecated
    warnings.simplefilter("ignore", UserWarning)
    from torchvision.transforms._transforms_video import (
        CenterCropVideo,
        NormalizeVideo,
        RandomHorizontalFlipVideo,
    )

from model import LanguageBind
from model.official_preprocess import official_audio, official_depth, official_image, official_video
from model.preprocess import kaldi_fbank
from pipeline.synthetic import CONCEPTS, make_clip
from tests.languagebind_ckpt import load_reference, reference_vision, write_checkpoint

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def image_transform(size: int = 224) -> transforms.Compose:
    """The official thermal/image transform; tensor Resize without antialias, as in torchvision 0.14."""
    return transforms.Compose(
        [
            transforms.ToTensor(),
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC, antialias=False),
            transforms.CenterCrop(size),
            transforms.Normalize(MEAN, STD),
        ]
    )


def reference_video(path, num_frames: int, size: int = 224, flip: bool = False) -> torch.Tensor:
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    index = np.linspace(0, len(frames) - 1, num_frames, dtype=int)
    x = torch.from_numpy(np.stack([frames[i] for i in index])).permute(
        3, 0, 1, 2
    )  # decord: (T,H,W,C) -> C,T,H,W
    x = NormalizeVideo(MEAN, STD)(x / 255.0)
    _, _, h, w = x.shape  # pytorchvideo ShortSideScale
    new = (int(math.floor(h / w * size)), size) if w < h else (size, int(math.floor(w / h * size)))
    x = torch.nn.functional.interpolate(x, size=new, mode="bilinear", align_corners=False)
    x = CenterCropVideo(size)(x)
    if flip:
        x = RandomHorizontalFlipVideo(p=1.0)(x)
    return x


def reference_depth(path, max_depth: float = 10.0, size: int = 224) -> torch.Tensor:
    depth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype("float32")
    depth = (depth / 1000.0).clip(min=0.01)
    depth = depth.clip(max=max_depth) / max_depth
    x = torch.from_numpy(depth).unsqueeze(0).repeat(3, 1, 1)
    return transforms.Compose(image_transform(size).transforms[1:])(x)


def reference_audio(
    path, num_mel_bins: int, target_length: int = 1036, mean: float = -4.2677393, std: float = 4.5689974
) -> torch.Tensor:
    data, _ = soundfile.read(str(path), dtype="float32", always_2d=True)
    wave = torch.from_numpy(data.T.copy())
    wave -= wave.mean()
    mel = kaldi_fbank(wave[0], 16000, num_mel_bins)
    if mel.shape[0] > target_length:
        ranges = np.array_split(list(range(0, mel.shape[0] - target_length + 1)), 3)
        starts = [r[0] if len(r) else 0 for r in ranges]  # the official code's "fixed" choice
        fused = torch.stack([mel[s : s + target_length] for s in starts])
    elif mel.shape[0] < target_length:
        repeat = int(target_length / mel.shape[0]) + 1
        fused = torch.stack([mel.repeat(repeat, 1)[:target_length]] * 3)
    else:
        fused = torch.stack([mel] * 3)
    return (fused.transpose(1, 2) - mean) / (std * 2)


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("lb_video") / "clip.mp4"
    make_clip(path, CONCEPTS[0], seconds=2.0, fps=15, size=(160, 120), seed=3)
    return path


def test_video_matches_the_official_transform(clip_path):
    expected = reference_video(clip_path, 8)
    got = official_video(clip_path, 8)
    assert got.shape == (8, 3, 224, 224)
    assert (got - expected.transpose(0, 1)).abs().max() < 1e-5
    flipped = official_video(clip_path, 8, flip=True)
    assert (flipped - reference_video(clip_path, 8, flip=True).transpose(0, 1)).abs().max() < 1e-5
    assert (flipped - got).abs().max() > 0.1  # the flip is real, and off by default


def test_audio_tiles_short_clips_and_chunks_long_ones(tmp_path):
    rng = np.random.default_rng(0)
    for seconds, bins in ((3.0, 112), (15.0, 126), (166000 / 16000, 112)):
        n = int(round(seconds * 16000))
        stereo = np.stack([np.sin(np.arange(n) * 0.03), rng.normal(0, 0.1, n)], axis=1) * 0.5
        path = tmp_path / f"a{seconds}.wav"
        soundfile.write(path, stereo.astype(np.float32), 16000, subtype="PCM_16")
        got = official_audio(path, bins, 1036, -4.2677393, 4.5689974)
        assert got.shape == (3, bins, 1036)
        assert (got - reference_audio(path, bins)).abs().max() < 1e-5, seconds
    long = official_audio(tmp_path / "a15.0.wav", 126, 1036, -4.2677393, 4.5689974)
    assert (long[0] - long[2]).abs().max() > 0.01  # three different chunks of a long clip
    flac = tmp_path / "a.flac"
    soundfile.write(flac, stereo.astype(np.float32), 16000)
    assert torch.allclose(official_audio(flac.read_bytes(), 112), official_audio(flac, 112))


def test_depth_scales_millimetres_as_the_official_transform(tmp_path):
    rng = np.random.default_rng(1)
    millimetres = rng.integers(0, 14000, size=(120, 160), dtype=np.uint16)
    path = tmp_path / "depth.png"
    cv2.imwrite(str(path), millimetres)
    got = official_depth(path)
    assert got.shape == (3, 224, 224)
    assert (got - reference_depth(path)).abs().max() < 1e-4
    assert (official_depth(path.read_bytes()) - got).abs().max() == 0


def test_thermal_and_image_read_the_file_as_the_official_transform(tmp_path):
    rng = np.random.default_rng(2)
    rgb = Image.fromarray(rng.integers(0, 256, size=(96, 150, 3), dtype=np.uint8))
    rgb.save(tmp_path / "image.png")
    rgb.save(tmp_path / "thermal.jpg", quality=95)
    for name in ("image.png", "thermal.jpg"):
        expected = image_transform()(Image.open(tmp_path / name))
        assert (official_image(tmp_path / name) - expected).abs().max() < 1e-4, name
    grey = tmp_path / "grey.jpg"
    rgb.convert("L").save(grey)  # the official reads it as is and fails; vidal reads it as RGB
    assert (official_image(grey) - image_transform()(Image.open(grey).convert("RGB"))).abs().max() < 1e-4


def test_a_released_model_encodes_files_with_the_official_processors(tmp_path, clip_path):
    video = write_checkpoint(tmp_path / "video", "video", seed=7)
    depth = write_checkpoint(tmp_path / "depth", "depth", seed=8)
    model = LanguageBind.load({"video": video, "depth": depth})
    assert model.config.preprocess == "languagebind"
    sd, config = load_reference(video)
    expected = F.normalize(reference_vision(sd, config, reference_video(clip_path, 4, size=32)[None]), dim=-1)
    assert (model.encode("video", [clip_path]) - expected).abs().max() < 1e-4
    millimetres = np.random.default_rng(3).integers(0, 12000, size=(64, 80), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), millimetres)
    sd, config = load_reference(depth)
    expected = F.normalize(
        reference_vision(sd, config, reference_depth(tmp_path / "d.png", size=32)[None]), dim=-1
    )
    assert (model.encode("depth", [tmp_path / "d.png"]) - expected).abs().max() < 1e-4


def test_audio_and_thermal_towers_read_files_with_their_checkpoint_settings(tmp_path):
    audio = write_checkpoint(tmp_path / "audio", "audio", seed=9)  # Audio_FT: 112 mel bins
    thermal = write_checkpoint(tmp_path / "thermal", "thermal", seed=10)
    model = LanguageBind.load({"audio": audio, "infrared": thermal})
    wave = 0.2 * np.sin(np.arange(5 * 16000) * 0.05)
    soundfile.write(tmp_path / "s.wav", wave.astype(np.float32), 16000, subtype="PCM_16")
    sd, config = load_reference(audio)
    expected = F.normalize(
        reference_vision(sd, config, reference_audio(tmp_path / "s.wav", 112)[None]), dim=-1
    )
    assert (model.encode("audio", [tmp_path / "s.wav"]) - expected).abs().max() < 1e-4
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(
        tmp_path / "t.jpg"
    )
    sd, config = load_reference(thermal)
    pixels = image_transform(32)(Image.open(tmp_path / "t.jpg"))[None]
    expected = F.normalize(reference_vision(sd, config, pixels), dim=-1)
    assert (model.encode("infrared", [tmp_path / "t.jpg"]) - expected).abs().max() < 1e-4


def test_the_shared_preprocess_entry_switches_modes(tmp_path):
    from model.model_config import TowerConfig
    from model.preprocess import preprocess

    cv2.imwrite(
        str(tmp_path / "d.png"), np.random.default_rng(5).integers(0, 12000, (60, 90), dtype=np.uint16)
    )
    tower = TowerConfig(image_size=224, languagebind={"max_depth": 10})
    official = preprocess("depth", tmp_path / "d.png", mode="languagebind", tower=tower)
    assert (official - reference_depth(tmp_path / "d.png")).abs().max() < 1e-4
    own = preprocess("depth", tmp_path / "d.png")
    assert own.shape == official.shape and (own - official).abs().max() > 0  # antialiasing differs
    with pytest.raises(ValueError, match="needs the tower"):
        preprocess("depth", tmp_path / "d.png", mode="languagebind")
