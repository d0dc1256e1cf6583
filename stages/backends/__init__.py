"""Model backends by family. A model is named in config as ``family:name_or_path``.

``hf:Intel/dpt-large``, ``hf:/local/dir``, ``munit:/path/translation_weights.pt``, ``whisper:small``,
``openai:gpt-4o-mini``, and ``tiny`` (optionally ``tiny:<variant>``): a small random-weight model for
tests and the offline demo. Each family's loader lives in its own module here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded (missing, truncated, of another architecture); raised before any row."""


def parse_model_spec(spec: str) -> tuple[str, str]:
    """``"hf:Intel/dpt-large"`` -> ``("hf", "Intel/dpt-large")``; ``"tiny"`` -> ``("tiny", "")``."""
    text = (spec or "").strip()
    if not text:
        raise ValueError("empty model name; expected family:name, e.g. hf:Intel/dpt-large or tiny")
    family, sep, name = text.partition(":")
    if not sep:
        if family == "tiny":
            return "tiny", ""
        raise ValueError(f"model {spec!r}: expected family:name, e.g. hf:{spec} (or tiny)")
    if not family or (not name and family != "tiny"):
        raise ValueError(f"model {spec!r}: expected family:name, e.g. hf:Intel/dpt-large")
    return family, name


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the first CUDA device when one is visible, else CPU; or an explicit ``cpu``/``cuda:1``."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but no CUDA device is visible to this process")
    return device
