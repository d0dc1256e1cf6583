"""RGB -> thermal infrared backends: ``munit:<checkpoint>`` (sRGB-TIR), ``cyclegan:<checkpoint>``, ``tiny``.

Checkpoints are read with ``torch.load(weights_only=True)`` (no code runs while unpickling) and loaded
strictly: a file that is missing, truncated, or made for another architecture raises ``ModelLoadError``
listing the missing / unexpected / reshaped keys. The families' checkers do the same against a
meta-device model (no memory), so the driver can refuse a bad checkpoint before any actor starts. All
three register as kind ``infrared`` in ``contracts.backends``; their options are the infrared config's
keys (``munit``, ``source_domain``, ``target_domain``, ``allow_pickle``, ``short_side``, ``max_side``,
``output_range``, ``seed``).

``InfraredModel.translate`` takes same-shaped uint8 RGB frames and one style key per frame and returns
uint8 single-channel images of the frames' size. Frames are scaled to ``short_side`` (sRGB-TIR was
trained on 400x640), normalised to [-1, 1], translated, turned to one channel (BT.601 luma of the
three output channels), scaled to 8 bits and resized back.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from contracts import backends
from contracts.backends import ModelLoadError, ModelSpec
from stages.backends.batching import autocast
from stages.backends.cyclegan import ResnetGenerator, tiny_generator, to_native
from stages.backends.munit import (
    MunitArch,
    MunitGenerator,
    MunitTranslator,
    strip_legacy_keys,
    tiny_translator,
)

TINY_VARIANTS = ("munit", "cyclegan")
LUMA = (0.299, 0.587, 0.114)


# -- reading and strict loading ----------------------------------------------------------------------
def read_checkpoint(path: str, allow_pickle: bool = False, what: str = "checkpoint") -> Any:
    """``torch.load`` on the CPU with clear errors for a missing, truncated or non-tensor file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelLoadError(f"{what}: checkpoint not found: {p}")
    try:
        try:
            return torch.load(p, map_location="cpu", weights_only=not allow_pickle, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(p, map_location="cpu", weights_only=not allow_pickle)  # pre-1.6 format
    except pickle.UnpicklingError as e:
        raise ModelLoadError(
            f"{what}: {p} holds Python objects besides tensors ({str(e).splitlines()[0]}); "
            "re-save its state dict, or set allow_pickle: true if you trust the file"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise ModelLoadError(f"{what}: {p} is unreadable or truncated ({str(e).splitlines()[0]})") from None


def _listed(keys: list[str], limit: int = 8) -> str:
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_strict(module: nn.Module, state: dict[str, Any], what: str) -> None:
    """``load_state_dict(strict=True)`` with one readable error naming missing, unexpected and reshaped keys.

    Works on a meta-device module too (then it only checks names and shapes).
    """
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{what}: expected a state dict of tensors, got {type(state).__name__}")
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or reshaped:
        parts = [
            f"{len(missing)} missing ({_listed(missing)})" if missing else "",
            f"{len(unexpected)} unexpected ({_listed(unexpected)})" if unexpected else "",
            f"{len(reshaped)} of another shape, checkpoint vs model ({_listed(reshaped, 4)})"
            if reshaped
            else "",
        ]
        raise ModelLoadError(
            f"{what}: the checkpoint does not fit the architecture: " + "; ".join(p for p in parts if p)
        )
    if next(iter(expected.values()), torch.empty(0)).device.type != "meta":
        module.load_state_dict(state, strict=True)


# -- family loaders ----------------------------------------------------------------------------------
def _munit_states(ckpt: Any, spec: str, source: str, target: str) -> tuple[dict, dict]:
    if not isinstance(ckpt, dict) or source not in ckpt or target not in ckpt:
        found = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ModelLoadError(
            f"infrared model {spec!r}: expected a MUNIT generator checkpoint with domains "
            f"{source!r} and {target!r} (e.g. sRGB-TIR's {{'a': …, 'b': …}}), found {found}"
        )
    return strip_legacy_keys(ckpt[source]), strip_legacy_keys(ckpt[target])


def build_munit(
    ckpt: Any, spec: str, arch: MunitArch, source: str, target: str, meta: bool = False
) -> MunitTranslator:
    """Both domains' generators loaded strictly, then source content encoder + target decoder."""
    src_state, tgt_state = _munit_states(ckpt, spec, source, target)
    with torch.device("meta") if meta else torch.device("cpu"):
        src, tgt = MunitGenerator(arch), MunitGenerator(arch)
    hint = f" (infrared.munit: {arch.model_dump()})"
    load_strict(src, src_state, f"infrared model {spec!r} domain {source!r}{hint}")
    load_strict(tgt, tgt_state, f"infrared model {spec!r} domain {target!r}{hint}")
    return MunitTranslator(src, tgt).eval()


def _cyclegan_state(ckpt: Any, spec: str, domain: str) -> dict[str, torch.Tensor]:
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state, dict):
        raise ModelLoadError(f"infrared model {spec!r}: expected a state dict, got {type(state).__name__}")
    domains = sorted({k.split(".")[1] for k in state if k.startswith("generators.")})
    if domains:  # a whole MMagic CycleGAN: one generator per target domain
        if domain not in domains:
            raise ModelLoadError(
                f"infrared model {spec!r}: no generator for domain {domain!r} in this MMagic "
                f"checkpoint; set infrared.target_domain to one of {domains}"
            )
        prefix = f"generators.{domain}."
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def build_cyclegan(ckpt: Any, spec: str, domain: str, meta: bool = False) -> ResnetGenerator:
    """A ResNet generator shaped after the checkpoint, loaded strictly."""
    state = _cyclegan_state(ckpt, spec, domain)
    try:
        native, arch = to_native(state)
    except ValueError as e:
        raise ModelLoadError(f"infrared model {spec!r}: {e}") from None
    with torch.device("meta") if meta else torch.device("cpu"):
        net = ResnetGenerator(**arch)
    load_strict(net, native, f"infrared model {spec!r} (ResNet generator {arch})")
    return net.eval()


def _munit(
    spec: ModelSpec,
    meta: bool,
    munit: MunitArch | None = None,
    source_domain: str = "b",
    target_domain: str = "a",
    allow_pickle: bool = False,
    **_: Any,
) -> MunitTranslator:
    ckpt = read_checkpoint(spec.name, allow_pickle, f"infrared model {spec.text!r}")
    return build_munit(ckpt, spec.text, munit or MunitArch(), source_domain, target_domain, meta=meta)


def _cyclegan(
    spec: ModelSpec, meta: bool, target_domain: str = "a", allow_pickle: bool = False, **_: Any
) -> ResnetGenerator:
    ckpt = read_checkpoint(spec.name, allow_pickle, f"infrared model {spec.text!r}")
    return build_cyclegan(ckpt, spec.text, target_domain, meta=meta)


def check_munit(spec: ModelSpec, **options: Any) -> None:
    """Everything loading checks (file, domains, keys and shapes), against meta-device generators."""
    _munit(spec, meta=True, **options)


def check_cyclegan(spec: ModelSpec, **options: Any) -> None:
    """Everything loading checks, against a meta-device ResNet generator."""
    _cyclegan(spec, meta=True, **options)


# -- the model ---------------------------------------------------------------------------------------
def style_codes(keys: list[str], dim: int, seed: int = 0) -> torch.Tensor:
    """One standard-normal style code per key (e.g. ``video_id/frame``), independent of batching."""
    codes = []
    for key in keys:
        digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
        codes.append(torch.randn(dim, generator=g))
    return torch.stack(codes) if codes else torch.empty(0, dim)


def work_size(h: int, w: int, short_side: int | None, max_side: int, multiple: int) -> tuple[int, int]:
    """The model's input size: short side ``short_side`` (or the frame's), long side <= ``max_side``,
    both rounded to a multiple the generator maps back to the same size."""
    s = (short_side / min(h, w)) if short_side else 1.0
    s = min(s, max_side / max(h, w))
    return (
        max(multiple, round(h * s / multiple) * multiple),
        max(multiple, round(w * s / multiple) * multiple),
    )


class InfraredModel:
    """A translator on one device with its pre- and post-processing."""

    def __init__(
        self,
        net: nn.Module,
        device: torch.device,
        dtype: torch.dtype | None,
        style_dim: int,
        multiple: int,
        short_side: int | None = 400,
        max_side: int = 1280,
        output_range: str = "minmax",
        seed: int = 0,
    ):
        self.channels_last = device.type == "cuda"  # cuDNN's fast bf16/fp16 convs want NHWC
        self.net = net.to(
            device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format
        )
        self.device, self.dtype = device, dtype
        self.style_dim, self.multiple = style_dim, multiple
        self.short_side, self.max_side = short_side, max_side
        self.output_range, self.seed = output_range, seed

    @torch.inference_mode()
    def translate(self, frames: list[torch.Tensor], keys: list[str]) -> torch.Tensor:
        """(B, H, W) uint8 infrared for same-shaped uint8 (3, H, W) frames; ``keys`` seed the style codes."""
        x = torch.stack(frames).to(self.device).float()
        h, w = x.shape[-2:]
        size = work_size(h, w, self.short_side, self.max_side, self.multiple)
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        x = x / 127.5 - 1.0
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.dtype):
            if self.style_dim:
                y = self.net(x, style_codes(keys, self.style_dim, self.seed).to(self.device))
            else:
                y = self.net(x)
        y = y.float()
        if self.output_range == "minmax":  # as sRGB-TIR's inference script saves (per-image min-max)
            lo = y.flatten(1).min(1).values.view(-1, 1, 1, 1)
            hi = y.flatten(1).max(1).values.view(-1, 1, 1, 1)
            y = (y - lo) / (hi - lo).clamp_min(1e-6)
        else:
            y = ((y + 1) / 2).clamp(0, 1)
        if y.shape[1] == 3:
            y = (y * torch.tensor(LUMA, device=y.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            y = y[:, :1]
        if y.shape[-2:] != (h, w):
            y = F.interpolate(y, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        return (y[:, 0] * 255).round().clamp(0, 255).to(torch.uint8)


def _infrared_model(
    net: nn.Module,
    device: torch.device,
    dtype: torch.dtype | None,
    *,
    short_side: int | None = 400,
    max_side: int = 1280,
    output_range: str = "minmax",
    seed: int = 0,
    **_: Any,
) -> InfraredModel:
    style_dim = net.style_dim if isinstance(net, MunitTranslator) else 0
    return InfraredModel(
        net, device, dtype, style_dim, net.multiple, short_side, max_side, output_range, seed
    )


@backends.register("infrared", "munit", usage="munit:<checkpoint .pt> (sRGB-TIR)", check=check_munit)
def load_munit(
    spec: ModelSpec, device: torch.device, dtype: torch.dtype | None, **options: Any
) -> InfraredModel:
    """A MUNIT checkpoint: the source domain's content encoder and the target domain's decoder."""
    return _infrared_model(_munit(spec, meta=False, **options), device, dtype, **options)


@backends.register("infrared", "cyclegan", usage="cyclegan:<checkpoint .pt>", check=check_cyclegan)
def load_cyclegan(
    spec: ModelSpec, device: torch.device, dtype: torch.dtype | None, **options: Any
) -> InfraredModel:
    """A ResNet CycleGAN generator (pytorch-CycleGAN-and-pix2pix or MMagic checkpoints)."""
    return _infrared_model(_cyclegan(spec, meta=False, **options), device, dtype, **options)


@backends.register("infrared", "tiny", usage="tiny[:munit|cyclegan]", variants=TINY_VARIANTS)
def load_tiny(
    spec: ModelSpec, device: torch.device, dtype: torch.dtype | None, **options: Any
) -> InfraredModel:
    """A random-weight MUNIT translator or ResNet generator (the same weights on every actor)."""
    net: nn.Module = tiny_generator() if spec.name == "cyclegan" else tiny_translator()
    return _infrared_model(net, device, dtype, **options)
