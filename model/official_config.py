"""LanguageBind's ``config.json`` <-> vidal's ``TowerConfig`` / ``TextConfig``.

A released config is a CLIP composite: ``model_type`` (``LanguageBindVideo`` ... ``LanguageBindImage``),
``projection_dim``, a CLIP ``text_config`` and a ``vision_config`` with LanguageBind's fields
(``add_time_attn``, ``num_frames``, ``clip_type``, ``lora_*``, ``num_mel_bins``/``target_length`` for the
audio grid, ``audio_mean``/``audio_std``/``audio_sample_rate``, ``max_depth``, ``force_patch_dropout``).
The defaults below are the official config classes' own, so a field a checkpoint leaves out means what
it means there. The vision_config a tower came from is kept in ``TowerConfig.languagebind`` so that an
export writes it back (with LoRA marked merged).
"""

from __future__ import annotations

from typing import Any

from model.model_config import TowerConfig

# model_type -> vidal modality (Thermal is vidal's infrared).
MODEL_TYPES = {
    "LanguageBindVideo": "video",
    "LanguageBindAudio": "audio",
    "LanguageBindDepth": "depth",
    "LanguageBindThermal": "infrared",
    "LanguageBindImage": "image",
}
MODALITY_TYPES = {m: t for t, m in MODEL_TYPES.items()}

# The official CLIPVisionConfig defaults (configuration_*.py) that decide numerics.
VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "add_time_attn": False,
    "num_frames": 1,
    "force_patch_dropout": 0.0,
    "lora_r": 2,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "num_mel_bins": 0,
    "target_length": 0,
    "video_decode_backend": "decord",
}
AUDIO_DEFAULTS = {"audio_sample_rate": 16000, "audio_mean": 0.5, "audio_std": 0.5}
DEPTH_DEFAULTS = {"max_depth": 10}
LOGIT_SCALE_INIT = 2.6592


def modality_of(config: dict[str, Any], source: object) -> str:
    """The vidal modality of a released config (``model_type``), or a ValueError naming ``source``."""
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"{source}: model_type {model_type!r} is not a released LanguageBind tower "
            f"(expected one of {sorted(MODEL_TYPES)})"
        )
    return MODEL_TYPES[model_type]


def vision_settings(config: dict[str, Any], modality: str) -> dict[str, Any]:
    """The checkpoint's vision_config with the official defaults filled in."""
    extra = AUDIO_DEFAULTS if modality == "audio" else DEPTH_DEFAULTS if modality == "depth" else {}
    return {**VISION_DEFAULTS, **extra, **(config.get("vision_config") or {})}


def tower_config(config: dict[str, Any], modality: str, source: object) -> dict[str, Any]:
    """``TowerConfig`` fields (architecture; LoRA off, as it is merged at load) for a released tower."""
    vision = vision_settings(config, modality)
    temporal = bool(vision["add_time_attn"])
    if temporal and modality != "video":
        raise ValueError(
            f"{source}: add_time_attn on a {modality} tower (temporal MLP variant) is not supported"
        )
    if vision.get("tube_size", 1) != 1:
        raise ValueError(
            f"{source}: tube_size {vision['tube_size']} is not supported (released towers use 1)"
        )
    if modality == "audio" and vision["num_mel_bins"] and vision["target_length"]:
        image_size: Any = [int(vision["num_mel_bins"]), int(vision["target_length"])]
    else:
        image_size = vision["image_size"]
    return {
        "width": vision["hidden_size"],
        "layers": vision["num_hidden_layers"],
        "heads": vision["num_attention_heads"],
        "mlp_dim": vision["intermediate_size"],
        "patch_size": vision["patch_size"],
        "image_size": image_size,
        "in_channels": vision["num_channels"],
        "num_frames": int(vision["num_frames"]) if temporal else 1,
        "temporal": temporal,
        "frame_class_embedding": temporal and vision.get("clip_type", "vl") == "vl_new",
        "patch_dropout": float(vision["force_patch_dropout"]),
        "lora": {"r": 0, "alpha": vision["lora_alpha"], "dropout": vision["lora_dropout"]},
        "hidden_act": vision["hidden_act"],
        "layer_norm_eps": vision["layer_norm_eps"],
        "languagebind": dict(config.get("vision_config") or {}),
    }


def text_clip_config(config: dict[str, Any]) -> dict[str, Any]:
    """The CLIP text config vidal builds the text tower from (``projection_dim`` from the top level)."""
    text = dict(config.get("text_config") or {})
    text["projection_dim"] = config.get("projection_dim", text.get("projection_dim", 512))
    return text


def official_config(
    modality: str, cfg: TowerConfig, text_config: dict[str, Any], projection_dim: int
) -> dict[str, Any]:
    """A released-layout ``config.json`` for one vidal tower (LoRA already merged: ``lora_r`` 0)."""
    if cfg.temporal and modality != "video":
        raise ValueError(
            f"the {modality} tower has temporal blocks; the official {modality} classes have none"
        )
    vision = {**VISION_DEFAULTS, **(cfg.languagebind or {})}
    h, w = cfg.image_size
    if modality == "audio":
        vision.update(num_mel_bins=h, target_length=w)
        vision.setdefault("image_size", 224)
        for key, value in AUDIO_DEFAULTS.items():
            vision.setdefault(key, value)
    else:
        if h != w:
            raise ValueError(f"the {modality} tower's image_size {cfg.image_size} is not square")
        vision.update(image_size=h, num_mel_bins=0, target_length=0)
    if modality == "depth":
        vision.setdefault("max_depth", DEPTH_DEFAULTS["max_depth"])
    vision.update(
        hidden_size=cfg.width,
        intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_channels=cfg.in_channels,
        patch_size=cfg.patch_size,
        hidden_act=cfg.hidden_act,
        layer_norm_eps=cfg.layer_norm_eps,
        projection_dim=projection_dim,
        add_time_attn=cfg.temporal,
        num_frames=cfg.num_frames,
        lora_r=0,
        model_type="clip_vision_model",
    )
    if cfg.frame_class_embedding:
        vision["clip_type"] = "vl_new"
    elif vision.get("clip_type") == "vl_new":
        vision["clip_type"] = "vl"
    text = {k: v for k, v in text_config.items() if k not in ("architectures",)}
    text.update(projection_dim=projection_dim, model_type="clip_text_model")
    model_type = MODALITY_TYPES[modality]
    return {
        "architectures": [model_type],
        "model_type": model_type,
        "projection_dim": projection_dim,
        "logit_scale_init_value": LOGIT_SCALE_INIT,
        "initializer_factor": 1.0,
        "torch_dtype": "float32",
        "text_config": text,
        "vision_config": vision,
    }
