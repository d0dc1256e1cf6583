"""Depth estimation backends: transformers' depth models, and tiny random-weight ones.

``hf:<hub id or local dir>`` loads ``AutoModelForDepthEstimation`` with its image processor: GLPN
(``vinvino02/glpn-nyu``, metric, as VIDAL used), DPT (``Intel/dpt-large``, the MiDaS 3.1 conversions
such as ``Intel/dpt-beit-large-512``; relative) and Depth Anything (V2 relative, or the metric
fine-tunes). ``midas:<file.pt>`` reads the original MiDaS / DPT release files on timm backbones
(``stages.backends.midas``). ``tiny`` / ``tiny:<arch>`` builds a small random-weight model of one of the
transformers architectures from a config (for tests and the offline demo). All three register as kind
``depth`` in ``contracts.backends``, with the options ``depth_kind``, ``min_side``, ``max_side`` and
(``midas:``) ``midas_variant``.

``DepthModel.predict`` takes same-shaped uint8 RGB frames on the model's device and returns one map per
frame at the frame's size: metres for metric models, and for relative ones a per-frame normalised
depth order in [0, 1] (0 nearest, 1 farthest), since their output has no scale.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from contracts import backends
from contracts.backends import ModelSpec
from stages.backends.batching import autocast

log = logging.getLogger("vidal")
SUPPORTED = ("glpn", "dpt", "depth_anything")
TINY_ARCHS = SUPPORTED
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


# -- tiny models -------------------------------------------------------------------------------------
def tiny_config(arch: str = "glpn") -> Any:
    """A small config of a supported architecture (about 0.1 M parameters)."""
    from transformers import DepthAnythingConfig, Dinov2Config, DPTConfig, GLPNConfig

    if arch == "glpn":
        return GLPNConfig(
            num_encoder_blocks=4,
            depths=[1, 1, 1, 1],
            sr_ratios=[8, 4, 2, 1],
            hidden_sizes=[8, 16, 32, 64],
            patch_sizes=[7, 3, 3, 3],
            strides=[4, 2, 2, 2],
            num_attention_heads=[1, 1, 2, 4],
            mlp_ratios=[2, 2, 2, 2],
            decoder_hidden_size=16,
            max_depth=10,
        )
    if arch == "dpt":
        return DPTConfig(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=64,
            patch_size=16,
            neck_hidden_sizes=[8, 16, 32, 32],
            fusion_hidden_size=16,
            backbone_out_indices=[0, 1, 2, 3],
            head_hidden_size=8,
            reassemble_factors=[4, 2, 1, 0.5],
        )
    if arch == "depth_anything":
        backbone = Dinov2Config(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=70,
            patch_size=14,
            reshape_hidden_states=False,
            out_features=["stage1", "stage2", "stage3", "stage4"],
        )
        return DepthAnythingConfig(
            backbone_config=backbone,
            neck_hidden_sizes=[8, 16, 32, 32],
            fusion_hidden_size=16,
            head_hidden_size=8,
            reassemble_hidden_size=32,
            patch_size=14,
        )
    raise ValueError(f"tiny depth architecture {arch!r}: expected one of {TINY_ARCHS}")


def tiny_processor(arch: str = "glpn", small: bool = True) -> Any:
    """The image processor of an architecture (defaults of the released models; smaller when ``small``)."""
    from transformers import DPTImageProcessor, GLPNImageProcessor

    if arch == "glpn":
        return GLPNImageProcessor()  # native size rounded down to a multiple of 32
    if arch == "dpt":
        side = 64 if small else 384
        return DPTImageProcessor(
            size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )
    if arch == "depth_anything":
        side = 70 if small else 518
        return DPTImageProcessor(
            size={"height": side, "width": side},
            keep_aspect_ratio=True,
            ensure_multiple_of=14,
            image_mean=[0.485, 0.456, 0.406],  # ImageNet statistics, as DINOv2 was trained
            image_std=[0.229, 0.224, 0.225],
        )
    raise ValueError(f"tiny depth architecture {arch!r}: expected one of {TINY_ARCHS}")


def build_tiny(arch: str = "glpn", seed: int = 0) -> Any:
    """A tiny random-weight depth model; the same seed gives the same weights on every actor."""
    from transformers import AutoModelForDepthEstimation

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForDepthEstimation.from_config(tiny_config(arch)).eval()


def save_tiny(directory: str | Path, arch: str = "glpn") -> Path:
    """Write a tiny model and its processor with ``save_pretrained`` (loadable as ``hf:<directory>``)."""
    directory = Path(directory)
    build_tiny(arch).save_pretrained(directory)
    tiny_processor(arch).save_pretrained(directory)
    return directory


# -- checks before loading ---------------------------------------------------------------------------
def check_hf(spec: ModelSpec, **_: Any) -> None:
    """Cheap checks that need no weights loaded: a local dir has a supported config and complete weight
    files (a hub id is resolved, and cached, by transformers in the actor). Run on the driver."""
    d = spec.local_path
    if d is None:
        return
    if not d.is_dir():
        raise spec.error(f"directory not found: {d}")
    try:
        model_type = json.loads((d / "config.json").read_text()).get("model_type")
    except (OSError, ValueError) as e:
        raise spec.error(f"no readable config.json in {d} ({e})") from None
    if model_type not in SUPPORTED:
        raise spec.error(
            f"model_type {model_type!r} is not a supported depth architecture ({', '.join(SUPPORTED)})"
        )
    present = [f for f in WEIGHT_FILES if (d / f).exists()]
    if not present:
        raise spec.error(f"no weights in {d} (expected one of {', '.join(WEIGHT_FILES)})")
    _check_weight_file(d / present[0], spec)


def _check_weight_file(path: Path, spec: ModelSpec) -> None:
    # Reads only headers / the zip directory, so a truncated download fails here and not in an actor.
    try:
        if path.name == "model.safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                f.keys()
        elif path.name == "pytorch_model.bin":
            torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:
        raise spec.error(f"{path.name} is unreadable or truncated ({e})") from None


# -- the model ---------------------------------------------------------------------------------------
def depth_kind_of(config: Any) -> str:
    """``metric`` or ``relative`` from a model config (GLPN and metric Depth Anything give metres)."""
    if config.model_type == "glpn":
        return "metric"
    if config.model_type == "depth_anything":
        return "metric" if getattr(config, "depth_estimation_type", "relative") == "metric" else "relative"
    return "relative"  # DPT / MiDaS predict relative inverse depth


class DepthModel:
    """A depth network with its processor on one device; ``predict`` maps frames to depth."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        kind: str,
        device: torch.device,
        dtype: torch.dtype | None,
        min_side: int = 32,
        max_side: int = 1024,
    ):
        self.model = model.to(device).eval()
        self.processor = processor
        self.kind = kind
        self.device = device
        self.dtype = dtype
        self.min_side, self.max_side = min_side, max_side

    def bounded_size(self, h: int, w: int) -> tuple[int, int]:
        """The size a frame is resized to before the processor: long side <= max_side, each side >= min_side."""
        s = min(1.0, self.max_side / max(h, w))
        return max(self.min_side, round(h * s)), max(self.min_side, round(w * s))

    @torch.inference_mode()
    def predict(self, frames: list[torch.Tensor]) -> torch.Tensor:
        """(B, H, W) float32 maps for same-shaped uint8 (3, H, W) frames: metres, or [0, 1] when relative."""
        batch = torch.stack(frames).to(self.device)
        h, w = batch.shape[-2:]
        bh, bw = self.bounded_size(h, w)
        if (bh, bw) != (h, w):  # tiny or huge frames: bring into the range the processor handles
            batch = (
                F.interpolate(
                    batch.float(), size=(bh, bw), mode="bilinear", antialias=True, align_corners=False
                )
                .round()
                .clamp(0, 255)
                .to(torch.uint8)
            )
        pixels = self.processor(
            images=list(batch), return_tensors="pt", device=self.device, input_data_format="channels_first"
        )["pixel_values"].to(self.device)
        with autocast(self.device, self.dtype):
            pred = self.model(pixel_values=pixels).predicted_depth
        pred = F.interpolate(pred.float().unsqueeze(1), size=(h, w), mode="bicubic", align_corners=False)[
            :, 0
        ]
        if self.kind == "relative":
            return normalise_relative(pred)
        return pred


def normalise_relative(disparity: torch.Tensor) -> torch.Tensor:
    """Per-map (inverse-depth-like) output to a depth order in [0, 1]: 0 nearest, 1 farthest."""
    flat = disparity.flatten(1)
    lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    spread = hi - lo
    # A flat map has no order: all zeros. Otherwise the exact range, however small the model's scale.
    scaled = (hi - disparity) / torch.where(spread > 0, spread, torch.ones_like(spread))
    return torch.where(spread > 0, scaled, torch.zeros_like(scaled)).clamp(0, 1)


def _depth_model(
    spec: ModelSpec,
    model: Any,
    processor: Any,
    device: torch.device,
    dtype: torch.dtype | None,
    *,
    depth_kind: str = "auto",
    min_side: int = 32,
    max_side: int = 1024,
    **_: Any,
) -> DepthModel:
    detected = depth_kind_of(model.config)
    if depth_kind not in ("auto", detected):
        log.warning(
            "depth model %s: depth_kind set to %s (the config suggests %s)", spec, depth_kind, detected
        )
    kind = detected if depth_kind == "auto" else depth_kind
    return DepthModel(model, processor, kind, device, dtype, min_side, max_side)


@backends.register("depth", "tiny", usage=f"tiny[:{'|'.join(TINY_ARCHS)}]", variants=TINY_ARCHS)
def load_tiny(spec: ModelSpec, device: torch.device, dtype: torch.dtype | None, **options: Any) -> DepthModel:
    """A tiny random-weight model of ``spec.name``'s architecture (the same weights on every actor)."""
    return _depth_model(spec, build_tiny(spec.name), tiny_processor(spec.name), device, dtype, **options)


@backends.register("depth", "hf", usage="hf:<hub id or local dir>", check=check_hf)
def load_hf(spec: ModelSpec, device: torch.device, dtype: torch.dtype | None, **options: Any) -> DepthModel:
    """A transformers depth model; a checkpoint that does not fit its architecture raises ``ModelLoadError``."""
    check_hf(spec)
    return _depth_model(spec, *_load_hf(spec), device, dtype, **options)


def _load_hf(spec: ModelSpec) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForDepthEstimation
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(spec.name)
    except (OSError, ValueError) as e:
        raise spec.error(
            f"cannot read its config ({e}); with HF_HUB_OFFLINE=1 "
            "a hub id must be in the local cache, or give a local directory"
        ) from None
    if config.model_type not in SUPPORTED:
        raise spec.error(
            f"model_type {config.model_type!r} is not a supported depth architecture ({', '.join(SUPPORTED)})"
        )
    try:
        model, info = AutoModelForDepthEstimation.from_pretrained(
            spec.name, config=config, output_loading_info=True, ignore_mismatched_sizes=True
        )
        processor = AutoImageProcessor.from_pretrained(spec.name)
    except (OSError, ValueError, RuntimeError) as e:
        raise spec.error(f"loading failed: {e}") from None
    bad = [
        *info.get("missing_keys", []),
        *(str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys", [])),
    ]
    if bad:
        raise spec.error(
            f"the weights do not fit a {config.model_type} model "
            f"({len(bad)} missing or mismatched, e.g. {', '.join(sorted(bad)[:5])})"
        )
    if info.get("unexpected_keys"):
        log.warning("depth model %s: %d unused weights in the checkpoint", spec, len(info["unexpected_keys"]))
    return model, processor
