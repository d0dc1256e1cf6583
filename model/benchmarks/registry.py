"""Every benchmark by name: its tower, task, reader and prompt templates (one line each).

``get(name)`` accepts the paper's spellings too (``MSR-VTT``, ``NYU-D``, ``ESC-50``); ``read_roots``
reads the small YAML that ``--benchmark all`` and ``eval.benchmarks`` use::

    roots:                       # or the mapping itself, without "roots:"
      msrvtt: /data/MSRVTT
      esc50: /data/ESC-50-master
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.benchmarks import audio, prompts, video, vision
from model.benchmarks.layout import LayoutError

PROTOCOL_VERSION = "1"


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    modality: str
    task: str  # retrieval | classification | multilabel
    reader: Callable[[Path, bool], Any]
    templates: tuple[str, ...] = ()

    def read(self, root: str | Path, skip_missing: bool = False) -> Any:
        """The benchmark's items from ``root`` (``LayoutError`` naming what is missing)."""
        root = Path(root).expanduser()
        if not root.is_dir():
            raise LayoutError(f"{self.name}: benchmark root is not a directory: {root}")
        return self.reader(root, skip_missing)


_B = Benchmark
BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        _B("msrvtt", "MSR-VTT", "video", "retrieval", video.read_msrvtt),
        _B("msvd", "MSVD", "video", "retrieval", video.read_msvd),
        _B("didemo", "DiDeMo", "video", "retrieval", video.read_didemo),
        _B("activitynet", "ActivityNet Captions", "video", "retrieval", video.read_activitynet),
        _B("esc50", "ESC-50", "audio", "classification", audio.read_esc50, prompts.AUDIO_TEMPLATES),
        _B("clotho", "Clotho", "audio", "retrieval", audio.read_clotho),
        _B("audiocaps", "AudioCaps", "audio", "retrieval", audio.read_audiocaps),
        _B("audioset", "AudioSet", "audio", "multilabel", audio.read_audioset, prompts.AUDIO_TEMPLATES),
        _B("nyud", "NYU-D", "depth", "classification", vision.read_nyud, prompts.DEPTH_TEMPLATES),
        _B("sund", "SUN-D", "depth", "classification", vision.read_sund, prompts.DEPTH_TEMPLATES),
        _B("llvip", "LLVIP", "infrared", "classification", vision.read_llvip, prompts.INFRARED_TEMPLATES),
        _B(
            "flir_v1",
            "FLIR v1",
            "infrared",
            "classification",
            vision.read_flir_v1,
            prompts.INFRARED_TEMPLATES,
        ),
        _B(
            "flir_v2",
            "FLIR v2",
            "infrared",
            "classification",
            vision.read_flir_v2,
            prompts.INFRARED_TEMPLATES,
        ),
        _B(
            "imagenet",
            "ImageNet-style folder",
            "image",
            "classification",
            vision.read_image_folder,
            prompts.IMAGE_TEMPLATES,
        ),
    )
}
ALIASES = {
    "msr-vtt": "msrvtt",
    "esc-50": "esc50",
    "nyu-d": "nyud",
    "nyuv2": "nyud",
    "sun-d": "sund",
    "sunrgbd": "sund",
    "flir": "flir_v1",
    "flirv1": "flir_v1",
    "flirv2": "flir_v2",
    "activitynet-captions": "activitynet",
    "image": "imagenet",
}


def get(name: str) -> Benchmark:
    """The benchmark called ``name`` (case-insensitive, the paper's spellings accepted)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)} or all")
    return BENCHMARKS[key]


def read_roots(path: str | Path) -> dict[str, str]:
    """``{benchmark: root}`` from a roots YAML, in registry order; ``ValueError`` naming a bad entry."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ValueError(f"benchmark config not found: {path}") from None
    roots = data.get("roots", data) if isinstance(data, dict) else None
    if not isinstance(roots, dict) or not roots:
        raise ValueError(f"{path}: expected a mapping 'roots: {{benchmark: folder}}'")
    out = {}
    for name, root in roots.items():
        try:
            key = get(str(name)).name
        except ValueError as e:
            raise ValueError(f"{path}: roots.{name}: {e}") from None
        if root:
            out[key] = str(root)
    return {k: out[k] for k in BENCHMARKS if k in out}
