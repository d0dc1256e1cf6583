"""``midas:<file.pt>``: the original MiDaS / DPT release files (intel-isl), on timm backbones.

Users of MiDaS hold the release's own state dicts (``dpt_beit_large_512.pt``, ``dpt_large_384.pt``, …),
which transformers' DPT classes do not read without a conversion. This backend reads them as they are:
``midas_dpt.MidasDPT`` rebuilds the release's module tree on the same timm encoder (created with
``pretrained=False``), and the file must fit it exactly. The variant comes from the file name (the
release's names, or the v3.0 ``dpt_large-midas-*.pt`` / ``dpt_hybrid-midas-*.pt``) or from
``depth.midas_variant``.

The release was saved with timm 0.6; timm 1.x moved a few encoder weights (Swin-V2's patch merging to
the next stage and ``head.fc``; LeViT's flat ``blocks`` into ``stages``) and stopped saving derived
buffers (BEiT's ``relative_position_index``, Swin-V2's ``attn_mask``, LeViT's ``attention_bias_idxs``).
``original_to_timm`` / ``timm_to_original`` are that renaming, both ways; the derived buffers are
recomputed, so a file may have them or not. Every other key must be present with its shape.

Input transform, as the release's ``model_loader.py`` defines it: RGB in [0, 1]; resized (bicubic) with
the "minimal" rule (the side whose scale is nearer 1 decides) to a multiple of 32 keeping the aspect
ratio for ViT / BEiT / hybrid, or to the square training size for Swin-V2 and LeViT; normalised with mean
and std 0.5. The output (relative inverse depth) is resized back bicubically, as the release's
``run.py`` does, and normalised per frame like every relative model here.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from contracts import backends
from contracts.backends import ModelLoadError, ModelSpec
from stages.backends.batching import autocast
from stages.backends.depth import normalise_relative
from stages.backends.midas_dpt import LEVIT_FLAT, VARIANTS, MidasDPT, Variant

log = logging.getLogger("vidal")
MULTIPLE_OF = 32
V30_FILE_NAMES = {"dpt_large-midas": "dpt_large_384", "dpt_hybrid-midas": "dpt_hybrid_384"}
DERIVED_BUFFERS = ("relative_position_index", "relative_coords_table", "attn_mask", "attention_bias_idxs")
ENCODER = "pretrained.model."


# -- which variant -----------------------------------------------------------------------------------
def variant_from_name(path: str) -> str | None:
    """The variant a release file name names (``dpt_swin2_tiny_256.pt``, ``dpt_large-midas-2f21e586.pt``)."""
    stem = Path(path).name.lower()
    names = {**{n: n for n in VARIANTS}, **V30_FILE_NAMES}
    found = [n for n in names if n in stem]
    return names[max(found, key=len)] if found else None


def resolve_variant(spec: ModelSpec, explicit: str | None = None) -> Variant:
    """The variant of a ``midas:`` spec: ``explicit`` when given, else from the file name."""
    name = explicit or variant_from_name(spec.name)
    if name is None:
        raise spec.error(
            "cannot tell the MiDaS variant from the file name; set "
            f"depth.midas_variant to one of {', '.join(VARIANTS)}"
        )
    if name not in VARIANTS:
        raise ModelLoadError(f"depth.midas_variant {name!r}: expected one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


# -- original key names <-> timm 1.x -----------------------------------------------------------------
_LEVIT_PARTS = {  # (part, is downsample) -> ((release name, timm 1.x name) replacements, in order)
    ("attn", False): (("m.", "attn."),),
    ("mlp", False): (("m.0.", "mlp.ln1."), ("m.2.", "mlp.ln2.")),
    ("attn", True): (("", "attn_downsample."),),
    ("mlp", True): (("m.0.", "mlp.ln1."), ("m.2.", "mlp.ln2.")),
}
_LEVIT_COMMON = ((".proj.1.", ".proj.ln."), (".q.1.", ".q.ln."), (".c.", ".linear."))
_LEVIT_TOP = tuple(  # the stem's four convolutions and the two classifier heads
    pair
    for i in range(4)
    for pair in (
        (f"patch_embed.{2 * i}.c.", f"stem.conv{i + 1}.linear."),
        (f"patch_embed.{2 * i}.bn.", f"stem.conv{i + 1}.bn."),
    )
) + (("head.l.", "head.linear."), ("head_dist.l.", "head_dist.linear."))


def _levit_prefix(flat: int) -> tuple[str, tuple[tuple[str, str], ...]]:
    stage, block, part = LEVIT_FLAT[flat]
    where = f"stages.{stage}.downsample." if block < 0 else f"stages.{stage}.blocks.{block}."
    return where, _LEVIT_PARTS[(part, block < 0)]


def _levit_to_timm(key: str) -> str:
    for old, new in _LEVIT_TOP:
        if key.startswith(old):
            return new + key[len(old) :]
    match = re.match(r"blocks\.(\d+)\.(.*)", key)
    if not match or int(match[1]) >= len(LEVIT_FLAT):
        return key  # not a release key: left as it is, so the strict check names it
    where, parts = _levit_prefix(int(match[1]))
    rest = match[2]
    for old, new in parts:
        if rest.startswith(old):
            rest = new + rest[len(old) :]
            break
    rest = "." + rest
    for old, new in _LEVIT_COMMON:
        rest = rest.replace(old, new)
    return where + rest[1:]


def _levit_to_original(key: str) -> str:
    for old, new in _LEVIT_TOP:
        if key.startswith(new):
            return old + key[len(new) :]
    for flat in range(len(LEVIT_FLAT)):
        where, parts = _levit_prefix(flat)
        if key.startswith(where) and not key[len(where) :].startswith("blocks."):
            rest = "." + key[len(where) :]
            for old, new in reversed(_LEVIT_COMMON):
                rest = rest.replace(new, old)
            rest = rest[1:]
            for old, new in parts:
                if rest.startswith(new):
                    return f"blocks.{flat}.{old}{rest[len(new) :]}"
    return key


def _swin2_rename(inner: str, to_timm: bool) -> str:
    # timm 0.6 merged patches at the end of stage i, timm 1.x at the start of stage i + 1
    shift = 1 if to_timm else -1
    inner = re.sub(
        r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) + shift}.downsample.", inner
    )
    old, new = ("head.", "head.fc.") if to_timm else ("head.fc.", "head.")
    return new + inner[len(old) :] if inner.startswith(old) else inner


def _rename_encoder_key(variant: Variant, key: str, to_timm: bool) -> str:
    if not key.startswith(ENCODER):
        return key  # the decoder's names did not change
    inner = key[len(ENCODER) :]
    if variant.family == "swin2":
        inner = _swin2_rename(inner, to_timm)
    elif variant.family == "levit":
        inner = _levit_to_timm(inner) if to_timm else _levit_to_original(inner)
    return ENCODER + inner


def original_to_timm(variant: Variant, key: str) -> str | None:
    """A release key as the module tree built on timm 1.x names it; None for a derived buffer."""
    if key.startswith(ENCODER) and key.endswith(DERIVED_BUFFERS):
        return None
    return _rename_encoder_key(variant, key, to_timm=True)


def timm_to_original(variant: Variant, key: str) -> str:
    """The inverse of ``original_to_timm``: the name a timm 1.x weight has in a release file."""
    return _rename_encoder_key(variant, key, to_timm=False)


def expected_layout(variant: Variant) -> dict[str, torch.Size]:
    """The release keys of a variant and their shapes (from a model built on the meta device: no memory)."""
    with torch.device("meta"):
        model = MidasDPT(variant)
    return {timm_to_original(variant, k): v.shape for k, v in model.state_dict().items()}


# -- reading and checking a file ---------------------------------------------------------------------
def read_state_dict(path: Path, spec: str, mmap: bool = True) -> dict[str, torch.Tensor]:
    """The tensors of a release file (``{"model": …, "optimizer": …}`` checkpoints unwrapped)."""
    if not path.is_file():
        raise ModelLoadError(f"depth model {spec!r}: file not found: {path}")
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as e:
            if not mmap or "mmap" not in str(e):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) file
    except Exception as e:
        reason = " ".join(str(e).split())[:200]
        raise ModelLoadError(
            f"depth model {spec!r}: {path.name} is unreadable or truncated ({reason})"
        ) from None
    if isinstance(state, dict) and "optimizer" in state and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"depth model {spec!r}: {path.name} is not a state dict of tensors")
    return state


def check_layout(variant: Variant, state: dict[str, Any], spec: str) -> None:
    """Strict: every release key present with its shape, no other key; the error names the first few."""
    expected = expected_layout(variant)
    given = {k: v for k, v in state.items() if original_to_timm(variant, k) is not None}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = sorted(
        f"{k} {tuple(given[k].shape)} != {tuple(expected[k])}"
        for k in set(given) & set(expected)
        if given[k].shape != expected[k]
    )
    problems = [
        f"{len(items)} {what} (e.g. {', '.join(items[:4])})"
        for what, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("with another shape", mismatched),
        )
        if items
    ]
    if problems:
        raise ModelLoadError(
            f"depth model {spec!r}: not a MiDaS {variant.name} state dict: {'; '.join(problems)}. "
            "Is depth.midas_variant right for this file?"
        )


def check_midas(spec: ModelSpec, *, midas_variant: str | None = None, **_: Any) -> None:
    """On the driver: the variant is known, the file reads, and its keys and shapes fit it exactly."""
    variant = resolve_variant(spec, midas_variant)
    check_layout(variant, read_state_dict(Path(spec.name).expanduser(), spec.text), spec.text)


def save_original_layout(model: MidasDPT, path: str | Path) -> Path:
    """Write a model's weights as a release file (the release's key names); for tests and benchmarks."""
    v = model.variant
    torch.save({timm_to_original(v, k): t for k, t in model.state_dict().items()}, path)
    return Path(path)


# -- the transform and the model ---------------------------------------------------------------------
def network_size(variant: Variant, h: int, w: int) -> tuple[int, int]:
    """The size a (h, w) frame is resized to: the release's "minimal" rule, multiple of 32."""
    if not variant.keep_aspect:
        return variant.net_size, variant.net_size
    scale_h, scale_w = variant.net_size / h, variant.net_size / w
    scale = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
    # round() rounds halves to even, as the release's np.round; at least one multiple for thin frames
    return tuple(max(MULTIPLE_OF, round(scale * s / MULTIPLE_OF) * MULTIPLE_OF) for s in (h, w))  # type: ignore[return-value]


class MidasDepthModel:
    """A release model on one device with its transform; ``predict`` as ``depth.DepthModel.predict``."""

    def __init__(self, model: MidasDPT, kind: str, device: torch.device, dtype: torch.dtype | None):
        self.model = model.to(device).eval()
        self.variant = model.variant
        self.kind = kind
        self.device = device
        self.dtype = dtype

    def transform(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> the normalised network input."""
        size = network_size(self.variant, *batch.shape[-2:])
        x = F.interpolate(batch.float() / 255.0, size=size, mode="bicubic", align_corners=False)
        return (x - 0.5) / 0.5

    @torch.inference_mode()
    def predict(self, frames: list[torch.Tensor]) -> torch.Tensor:
        """(B, H, W) float32 depth order in [0, 1] (0 nearest) for same-shaped uint8 (3, H, W) frames."""
        batch = torch.stack(frames).to(self.device)
        with autocast(self.device, self.dtype):
            disparity = self.model(self.transform(batch))
        disparity = F.interpolate(
            disparity.float().unsqueeze(1), size=batch.shape[-2:], mode="bicubic", align_corners=False
        )[:, 0]
        return normalise_relative(disparity)


def build_midas(variant: Variant | str, seed: int | None = None) -> MidasDPT:
    """The network of a variant with timm's initial (random) weights; ``seed`` makes them repeatable."""
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    if seed is None:
        return MidasDPT(v).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MidasDPT(v).eval()


def _empty_model(variant: Variant) -> MidasDPT:
    """The network with uninitialised weights (a file fills them) and timm's derived buffers computed.

    Built on the meta device and then given memory: timm's random init of a 345 M-parameter encoder
    costs about a minute on two cores, and every weight is overwritten anyway.
    """
    from timm.models._manipulate import reinit_non_persistent_buffers

    with torch.device("meta"):
        model = MidasDPT(variant)
    model = model.to_empty(device="cpu")
    reinit_non_persistent_buffers(model)
    return model.eval()


@backends.register("depth", "midas", usage="midas:<MiDaS release .pt file>", check=check_midas)
def load_midas(
    spec: ModelSpec,
    device: torch.device,
    dtype: torch.dtype | None,
    *,
    midas_variant: str | None = None,
    depth_kind: str = "auto",
    **_: Any,
) -> MidasDepthModel:
    """Build the variant's network and load the release file into it strictly."""
    variant = resolve_variant(spec, midas_variant)
    state = read_state_dict(
        Path(spec.name).expanduser(), spec.text
    )  # memory-mapped: copied, never held twice
    check_layout(variant, state, spec.text)
    model = _empty_model(variant)
    renamed = {n: t for k, t in state.items() if (n := original_to_timm(variant, k)) is not None}
    model.load_state_dict(renamed, strict=True)
    del state, renamed
    if depth_kind not in ("auto", "relative"):
        log.warning(
            "depth model %s: depth_kind set to %s (MiDaS predicts relative inverse depth)", spec, depth_kind
        )
    return MidasDepthModel(model, "relative" if depth_kind == "auto" else depth_kind, device, dtype)
