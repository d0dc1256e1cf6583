"""Typed model configuration: tower sizes, LoRA and patch dropout per modality, the text tower, init.

Missing per-modality keys are filled from ``MODALITY_DEFAULTS`` (LanguageBind's settings), so a YAML
may list only what differs. Validation runs before any weights are built, and a wrong key or value
fails with its dotted name.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MODALITIES = ("video", "audio", "depth", "infrared")
# Towers a model may have: the shard modalities, plus ``image`` (LanguageBind_Image; no shard key).
TOWER_MODALITIES = (*MODALITIES, "image")

# The parts of a tower that ``trainable`` may name. Position embeddings are never trainable (frozen,
# as in LanguageBind), and LoRA matrices always are.
TRAINABLE_PARTS = ("class_embedding", "patch_embedding", "norms", "temporal", "projection", "encoder")
DEFAULT_TRAINABLE = ["class_embedding", "patch_embedding", "norms", "temporal", "projection"]

# LanguageBind's per-modality recipe (LoRA rank/dropout, patch dropout, frames, audio fbank grid).
MODALITY_DEFAULTS: dict[str, dict[str, Any]] = {
    "video": {
        "num_frames": 8,
        "temporal": True,
        "patch_dropout": 0.3,
        "lora": {"r": 16, "alpha": 16, "dropout": 0.0},
    },
    "audio": {
        "image_size": [126, 1036],
        "patch_dropout": 0.3,
        "lora": {"r": 16, "alpha": 16, "dropout": 0.1},
    },
    "depth": {"patch_dropout": 0.5, "lora": {"r": 2, "alpha": 16, "dropout": 0.1}},
    "infrared": {"patch_dropout": 0.5, "lora": {"r": 2, "alpha": 16, "dropout": 0.1}},
    "image": {"patch_dropout": 0.5, "lora": {"r": 2, "alpha": 16, "dropout": 0.1}},
}

LANGUAGEBIND_PREFIX = "languagebind:"  # init_from a released LanguageBind tower: languagebind:<hub id or dir>
CLIP_LOGIT_SCALE_INIT = math.log(1 / 0.07)  # temperature 0.07
SIGLIP_LOGIT_SCALE_INIT = math.log(10.0)  # SigLIP: t' = log 10, b = -10
SIGLIP_LOGIT_BIAS_INIT = -10.0
LOGIT_SCALE_MAX = math.log(100.0)  # open_clip clamps the scale at 100


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraSettings(_Strict):
    """LoRA on the attention projections (q, k, v, out) of one tower; ``r = 0`` means no LoRA."""

    r: int = Field(16, ge=0, description="rank; 0 = no adapters (e.g. after merge_lora)")
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


class TowerConfig(_Strict):
    """One modality tower: a CLIP ViT (transformers' CLIP vision modules) plus temporal attention."""

    width: int = Field(1024, ge=8)
    layers: int = Field(24, ge=1)
    heads: int = Field(16, ge=1)
    mlp_dim: int = Field(4096, ge=8)
    patch_size: int = Field(14, ge=1)
    image_size: tuple[int, int] = Field((224, 224), description="(H, W); an int means square")
    in_channels: int = Field(3, ge=1)
    num_frames: int = Field(1, ge=1)
    temporal: bool = Field(False, description="a temporal attention block before each spatial one")
    frame_class_embedding: bool = Field(
        False, description="one class embedding per frame (LanguageBind V1.5's clip_type vl_new)"
    )
    time_embedding_std: float | None = Field(
        None, gt=0, description="init std of the frame embeddings; null: width ** -0.5 (LanguageBind)"
    )
    patch_dropout: float = Field(0.0, ge=0, lt=1)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    trainable: list[str] = Field(default_factory=lambda: list(DEFAULT_TRAINABLE))
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    languagebind: dict[str, Any] | None = Field(
        None, description="the official vision_config this tower was loaded from (kept for export)"
    )

    @field_validator("image_size", mode="before")
    @classmethod
    def _square(cls, v: Any) -> Any:
        return (v, v) if isinstance(v, int) else v

    @field_validator("trainable")
    @classmethod
    def _known_parts(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(TRAINABLE_PARTS))
        if unknown:
            raise ValueError(f"unknown trainable parts {unknown}; choose from {list(TRAINABLE_PARTS)}")
        return v

    @model_validator(mode="after")
    def _shapes(self) -> TowerConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        h, w = self.image_size
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.temporal and self.num_frames < 2:
            raise ValueError("temporal attention needs num_frames >= 2")
        if self.frame_class_embedding and self.num_frames < 2:
            raise ValueError("frame_class_embedding needs num_frames >= 2")
        return self

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, columns)."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size


class TextConfig(_Strict):
    """The frozen text tower: ``tiny`` (random, for tests), ``minilm`` (packaged), or any HF id / dir."""

    name_or_path: str = "tiny"
    pooling: Literal["auto", "clip", "mean"] = Field(
        "auto", description="clip: EOS token + text projection; mean: masked mean (sentence encoders)"
    )
    max_length: int | None = Field(None, ge=1, description="null: 77 for CLIP, up to 256 otherwise")
    cache_size: int = Field(4096, ge=0, description="LRU entries of caption -> embedding; 0 disables")
    clip_config: dict[str, Any] | None = Field(
        None,
        description="a CLIP text config (LanguageBind's text_config + projection_dim): the tower is built "
        "from it, its weights live in the model file, and name_or_path names the tokenizer",
    )
    # Only for name_or_path == "tiny":
    tiny_width: int = Field(32, ge=8)
    tiny_layers: int = Field(2, ge=1)
    tiny_heads: int = Field(2, ge=1)


class ModelConfig(_Strict):
    """The whole model; ``LanguageBind.from_config`` takes this, a dict or a YAML path."""

    embed_dim: int | None = Field(None, ge=1, description="shared dim; null = the text tower's dim")
    init_from: str | None = Field(
        None, description="CLIP checkpoint (hub id or dir), languagebind:<released id or dir>, or null"
    )
    loss: Literal["clip", "siglip"] = "clip"
    preprocess: Literal["vidal", "languagebind"] = Field(
        "vidal",
        description="raw-input transforms: vidal's own, or the official processors' (model.official_preprocess)",
    )
    text: TextConfig = Field(default_factory=TextConfig)
    modalities: dict[str, TowerConfig]

    @model_validator(mode="before")
    @classmethod
    def _fill_modality_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("modalities"), dict):
            return data
        data = dict(data)
        filled = {}
        for name, tower in data["modalities"].items():
            if name not in TOWER_MODALITIES:
                raise ValueError(f"modalities.{name}: unknown modality; choose from {list(TOWER_MODALITIES)}")
            if isinstance(tower, TowerConfig):
                filled[name] = tower
                continue
            filled[name] = _deep_merge(MODALITY_DEFAULTS[name], dict(tower or {}))
        data["modalities"] = filled
        return data

    @model_validator(mode="after")
    def _at_least_one(self) -> ModelConfig:
        if not self.modalities:
            raise ValueError("modalities: name at least one of " + ", ".join(TOWER_MODALITIES))
        return self

    @classmethod
    def load(cls, source: ModelConfig | dict[str, Any] | str | Path) -> ModelConfig:
        """A config from itself, a dict, or a YAML/JSON file path."""
        if isinstance(source, ModelConfig):
            return source.model_copy(deep=True)
        if isinstance(source, (str, Path)):
            with open(source, encoding="utf-8") as f:
                source = yaml.safe_load(f)
        return cls.model_validate(source)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def tiny_config(
    modalities: tuple[str, ...] | list[str] = MODALITIES, overrides: dict[str, Any] | None = None
) -> ModelConfig:
    """A few-thousand-parameter model with random weights for tests (mirrors configs/model/tiny.yaml)."""
    tower = {"width": 32, "layers": 2, "heads": 2, "mlp_dim": 64, "patch_size": 8, "image_size": 32}
    towers = {m: dict(tower) for m in modalities}
    if "audio" in towers:  # the real fbank grid (126 x 1036 -> 9 x 74 patches of 14)
        towers["audio"].update(patch_size=14, image_size=[126, 1036])
    data: dict[str, Any] = {"text": {"name_or_path": "tiny"}, "modalities": towers}
    return ModelConfig.model_validate(_deep_merge(data, overrides or {}))
