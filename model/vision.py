"""A modality tower: transformers' CLIP vision modules with temporal attention, patch dropout and a
projection into the shared embedding space.

The tower keeps ``CLIPVisionModel``'s module tree under ``vision`` (so a CLIP checkpoint's
``vision_model`` state dict loads into it after shape adaptation) but runs its own forward: patch
dropout must sit between the position embeddings and the encoder, and a temporal attention block
runs before every spatial layer for video.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import CLIPVisionConfig, CLIPVisionModel
from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer

from model.lora import add_lora, is_lora_parameter
from model.model_config import TowerConfig


def vision_config_of(cfg: TowerConfig) -> CLIPVisionConfig:
    """The transformers config of a tower (square ``image_size``; non-square grids are handled here)."""
    config = CLIPVisionConfig(
        hidden_size=cfg.width,
        intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_channels=cfg.in_channels,
        image_size=cfg.image_size[0],
        patch_size=cfg.patch_size,
        hidden_act=cfg.hidden_act,
        layer_norm_eps=cfg.layer_norm_eps,
    )
    config._attn_implementation = "sdpa"  # fused attention on CPU and GPU alike
    return config


class PatchDropout(nn.Module):
    """FLIP-style patch dropout: keep a random ``1 - p`` of the patch tokens, in training only.

    For video, every frame of a clip keeps the same patch indices, so temporal attention still
    compares a patch with itself across time.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def kept(self, num_patches: int) -> int:
        """How many patch tokens survive (at least one)."""
        return max(1, int(num_patches * (1.0 - self.p)))

    def forward(self, tokens: torch.Tensor, frames: int = 1) -> torch.Tensor:
        """``tokens``: ``[B * frames, N, D]`` patch tokens (no CLS), frames of a clip adjacent."""
        if not self.training or self.p == 0.0:
            return tokens
        bt, n, d = tokens.shape
        keep = self.kept(n)
        # argsort of uniform noise = a uniform random subset per clip
        idx = torch.rand(bt // frames, n, device=tokens.device).argsort(dim=1)[:, :keep]
        idx = idx.repeat_interleave(frames, dim=0)
        return tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, d))


class TemporalBlock(nn.Module):
    """Attention over the frames of each token position, with a learned frame-position embedding.

    Initialised from the spatial layer that follows it (``init_from_spatial``), as LanguageBind does,
    so the pretrained attention is the starting point for mixing across time.
    """

    def __init__(self, config: CLIPVisionConfig, num_frames: int, init_std: float | None = None) -> None:
        super().__init__()
        # LanguageBind's width ** -0.5 suits pretrained towers; random ones learn motion far sooner with
        # frame embeddings as large as a normalised token (std 1), see configs/model/demo.yaml.
        std = init_std if init_std is not None else config.hidden_size**-0.5
        self.time_embedding = nn.Parameter(torch.randn(num_frames, config.hidden_size) * std)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = CLIPAttention(config)

    def init_from_spatial(self, layer: CLIPEncoderLayer) -> None:
        """Copy the spatial attention and its pre-norm into this block."""
        self.attn.load_state_dict(layer.self_attn.state_dict())
        self.norm.load_state_dict(layer.layer_norm1.state_dict())

    def forward(self, hidden: torch.Tensor, frames: int) -> torch.Tensor:
        bt, n, d = hidden.shape
        b = bt // frames
        # The frame embedding joins the residual stream (as in LanguageBind), so later layers see it too.
        x = hidden.view(b, frames, n, d) + self.time_embedding[:frames, None, :].to(hidden.dtype)
        seq = x.transpose(1, 2).reshape(b * n, frames, d)
        mixed, _ = self.attn(self.norm(seq))
        x = x + mixed.view(b, n, frames, d).transpose(1, 2)
        return x.reshape(bt, n, d)


class ModalityTower(nn.Module):
    """ViT tower for one modality; ``forward`` returns unnormalised embeddings ``[B, embed_dim]``.

    Input: ``[B, C, H, W]``, or ``[B, T, C, H, W]`` for video (per-frame CLS after the final norm,
    averaged over frames).
    """

    def __init__(self, cfg: TowerConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        config = vision_config_of(cfg)
        self.vision = CLIPVisionModel(config)
        grid_h, grid_w = cfg.grid
        if grid_h * grid_w + 1 != self.vision.embeddings.num_positions:
            # Non-square input (audio fbank): one position per patch of the (grid_h, grid_w) grid.
            self.vision.embeddings.position_embedding = nn.Embedding(grid_h * grid_w + 1, cfg.width)
        # open_clip's width ** -0.5 rather than transformers' 0.02: position embeddings are frozen, and
        # at 0.02 a random tower can hardly tell where in the frame anything is (a checkpoint overwrites it).
        nn.init.normal_(self.vision.embeddings.position_embedding.weight, std=cfg.width**-0.5)
        if cfg.frame_class_embedding:
            # LanguageBind V1.5 (clip_type vl_new): each frame has its own class token.
            shared = self.vision.embeddings.class_embedding.data
            self.vision.embeddings.class_embedding = nn.Parameter(shared.repeat(cfg.num_frames, 1))
        self.temporal = (
            nn.ModuleList(
                TemporalBlock(config, cfg.num_frames, cfg.time_embedding_std) for _ in range(cfg.layers)
            )
            if cfg.temporal
            else None
        )
        self.patch_dropout = PatchDropout(cfg.patch_dropout)
        self.projection = nn.Linear(cfg.width, embed_dim, bias=False)
        nn.init.normal_(self.projection.weight, std=cfg.width**-0.5)
        self.gradient_checkpointing = False
        self.init_temporal_from_spatial()

    # -- set-up -----------------------------------------------------------------------------
    def init_temporal_from_spatial(self) -> None:
        """(Re)initialise every temporal block from its spatial layer; call after loading weights."""
        if self.temporal is not None:
            for block, layer in zip(self.temporal, self.vision.encoder.layers, strict=True):
                block.init_from_spatial(layer)

    def add_lora(self) -> None:
        """Put LoRA on the spatial and temporal attention projections, then apply ``cfg.trainable``."""
        add_lora(self.vision.encoder, self.cfg.lora)
        if self.temporal is not None:
            add_lora(self.temporal, self.cfg.lora)
        self.apply_trainable()

    def part_of(self, name: str) -> str:
        """Which ``TRAINABLE_PARTS`` entry a parameter belongs to (``lora``/``position`` are fixed)."""
        if is_lora_parameter(name):
            return "lora"
        if "position_embedding" in name:
            return "position"
        if "class_embedding" in name:
            return "class_embedding"
        if "patch_embedding" in name:
            return "patch_embedding"
        if "pre_layrnorm" in name or "post_layernorm" in name:
            return "norms"
        if name.startswith("temporal.") and ".attn." not in name:
            return "temporal"
        if name.startswith("projection."):
            return "projection"
        return "encoder"  # spatial layers, and the temporal attention's base weights

    def apply_trainable(self) -> None:
        """Set ``requires_grad`` from ``cfg.trainable``: LoRA always, position embeddings never."""
        allowed = set(self.cfg.trainable) | {"lora"}
        for name, param in self.named_parameters():
            param.requires_grad_(self.part_of(name) in allowed)

    # -- forward ----------------------------------------------------------------------------
    def _layer(self, index: int, hidden: torch.Tensor, frames: int) -> torch.Tensor:
        if self.temporal is not None and frames > 1:
            hidden = self.temporal[index](hidden, frames)
        return self.vision.encoder.layers[index](hidden, None)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        frames = 1
        if pixels.ndim == 5:
            if pixels.shape[2] != self.cfg.in_channels:
                raise ValueError(
                    f"video input {tuple(pixels.shape)} is not [B, T, {self.cfg.in_channels}, H, W]; the official "
                    "processor's [B, C, T, H, W] becomes that with x.transpose(1, 2)"
                )
            b, frames = pixels.shape[:2]
            if frames > self.cfg.num_frames:
                raise ValueError(f"got {frames} frames; this tower was built for {self.cfg.num_frames}")
            pixels = pixels.flatten(0, 1)
        emb = self.vision.embeddings
        patches = emb.patch_embedding(pixels.to(emb.patch_embedding.weight.dtype))
        tokens = patches.flatten(2).transpose(1, 2)
        positions = emb.position_embedding.weight
        if tokens.shape[1] + 1 != positions.shape[0]:
            raise ValueError(
                f"input {tuple(pixels.shape[-2:])} gives {tokens.shape[1]} patches; the tower expects "
                f"image_size {self.cfg.image_size} ({positions.shape[0] - 1} patches)"
            )
        tokens = self.patch_dropout(tokens + positions[1:], frames)
        cls = emb.class_embedding
        if cls.ndim == 2:  # one class embedding per frame; clips are frame-major within a batch row
            cls = cls[:frames].repeat(tokens.shape[0] // frames, 1)
        else:
            cls = cls.expand(tokens.shape[0], -1)
        cls = (cls + positions[0]).unsqueeze(1)
        hidden = self.vision.pre_layrnorm(torch.cat([cls, tokens], dim=1))
        for i in range(self.cfg.layers):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden = checkpoint(self._layer, i, hidden, frames, use_reentrant=False)
            else:
                hidden = self._layer(i, hidden, frames)
        pooled = self.vision.post_layernorm(hidden[:, 0])
        pooled = pooled.view(-1, frames, pooled.shape[-1]).mean(dim=1)
        return self.projection(pooled)
