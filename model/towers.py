"""Build the towers from a ``ModelConfig``: random (tiny/demo) or initialised from a CLIP checkpoint.

The text tower comes from the model-backend registry (kind ``text``, ``model.text``).

Loading goes through transformers' ``CLIPModel.from_pretrained`` (hub id or local directory), then
adapts shapes per modality: the patch grid of the position embeddings is interpolated (audio's
126 x 1036 fbank -> 9 x 74 patches of 14), the patch embedding is summed over RGB for a 1-channel
input, and the temporal blocks are copied from the spatial attention they precede.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, CLIPVisionConfig

from contracts import backends
from model.model_config import ModelConfig, TowerConfig
from model.text import TextTower
from model.vision import ModalityTower

log = logging.getLogger(__name__)


def load_clip(name_or_path: str) -> CLIPModel:
    """A CLIP checkpoint by hub id or directory, in float32 on CPU (towers are cast later)."""
    return CLIPModel.from_pretrained(name_or_path, dtype=torch.float32)


def architecture_of(vision_config: CLIPVisionConfig) -> dict[str, object]:
    """The ``TowerConfig`` size fields a checkpoint fixes."""
    return {
        "width": vision_config.hidden_size,
        "layers": vision_config.num_hidden_layers,
        "heads": vision_config.num_attention_heads,
        "mlp_dim": vision_config.intermediate_size,
        "patch_size": vision_config.patch_size,
        "hidden_act": vision_config.hidden_act,
        "layer_norm_eps": vision_config.layer_norm_eps,
    }


def interpolate_positions(weight: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize ``[1 + g*g, D]`` position embeddings (class first, square grid) to ``[1 + h*w, D]``."""
    source = math.isqrt(weight.shape[0] - 1)
    if source * source != weight.shape[0] - 1:
        raise ValueError(f"position embeddings of {weight.shape[0] - 1} patches are not a square grid")
    if (source, source) == tuple(grid):
        return weight.clone()
    patches = weight[1:].reshape(1, source, source, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(weight.dtype)
    return torch.cat([weight[:1], patches], dim=0)


def adapt_vision_state(state: dict[str, torch.Tensor], cfg: TowerConfig) -> dict[str, torch.Tensor]:
    """A CLIP ``vision_model`` state dict reshaped for ``cfg`` (position grid, input channels)."""
    state = dict(state)
    key = "embeddings.position_embedding.weight"
    state[key] = interpolate_positions(state[key], cfg.grid)
    state.pop("embeddings.position_ids", None)
    key = "embeddings.class_embedding"
    if cfg.frame_class_embedding and state[key].ndim == 1:  # V1.5-style: every frame starts from CLIP's token
        state[key] = state[key].repeat(cfg.num_frames, 1)
    key = "embeddings.patch_embedding.weight"
    channels = state[key].shape[1]
    if cfg.in_channels != channels:
        # One grey channel x fed through summed RGB filters == RGB filters on (x, x, x).
        mean = state[key].sum(dim=1, keepdim=True) / cfg.in_channels
        state[key] = mean.repeat(1, cfg.in_channels, 1, 1)
    return state


def build_tower(cfg: TowerConfig, embed_dim: int, clip: CLIPModel | None) -> ModalityTower:
    """One tower, weights from ``clip`` when given, temporal blocks from its spatial layers, then LoRA."""
    tower = ModalityTower(cfg, embed_dim)
    if clip is not None:
        state = adapt_vision_state(clip.vision_model.state_dict(), cfg)
        missing, unexpected = tower.vision.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.endswith("position_ids")]:
            raise RuntimeError(
                f"CLIP vision weights do not fit the tower: missing {missing}, unexpected {unexpected}"
            )
        if clip.visual_projection.weight.shape == tower.projection.weight.shape:
            tower.projection.load_state_dict(clip.visual_projection.state_dict())
        else:
            log.warning(
                "CLIP projection %s does not match the shared dim %d; the projection starts random",
                tuple(clip.visual_projection.weight.shape),
                embed_dim,
            )
        tower.init_temporal_from_spatial()
    tower.add_lora()
    return tower


def build_towers(config: ModelConfig) -> tuple[TextTower, dict[str, ModalityTower], ModelConfig]:
    """Text tower, modality towers, and the resolved config (checkpoint sizes filled in, ``init_from``
    cleared) that rebuilds the same module tree without the checkpoint (``LanguageBind.load``)."""
    clip = load_clip(config.init_from) if config.init_from else None
    reuse = (
        clip is not None and config.text.name_or_path == config.init_from and config.text.pooling != "mean"
    )
    text: TextTower = backends.load(
        "text",
        config.text.name_or_path,
        "cpu",
        "fp32",
        config=config.text,
        embed_dim=config.embed_dim,
        clip_model=clip if reuse else None,
    )
    if config.embed_dim is not None and config.embed_dim != text.dim:
        raise ValueError(f"embed_dim {config.embed_dim} differs from the text tower's output dim {text.dim}")
    embed_dim = text.dim
    towers: dict[str, nn.Module] = {}
    resolved = {}
    for name, cfg in config.modalities.items():
        if clip is not None:
            cfg = TowerConfig.model_validate(
                {**cfg.model_dump(), **architecture_of(clip.config.vision_config)}
            )
        towers[name] = build_tower(cfg, embed_dim, clip)
        resolved[name] = cfg
    resolved_config = config.model_copy(
        update={"init_from": None, "embed_dim": embed_dim, "modalities": resolved}
    )
    return text, towers, resolved_config
