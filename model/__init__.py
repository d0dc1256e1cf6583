"""LanguageBind-style multi-modal model: a frozen text tower and one ViT tower per modality.

Modalities (names used everywhere in ``model``): ``video`` (shard ``rgb.*.jpg``), ``audio``
(shard ``flac``), ``depth`` (shard ``depth.*.png``), ``infrared`` (shard ``ir.*.jpg``), and ``image``
(released LanguageBind_Image towers; no shard key).

Build::

    from model import LanguageBind, ModelConfig
    model = LanguageBind.tiny(("video",), {"loss": "siglip"})         # random tiny towers (tests)
    model = LanguageBind.from_config("configs/model/demo.yaml")      # YAML path, dict or ModelConfig
    model = LanguageBind.load("runs/x/model")                        # directory written by model.save()
    model = LanguageBind.load("LanguageBind/LanguageBind_Video_FT")  # a released tower (hub id or dir)
    model = LanguageBind.load({"video": ..., "image": ...})          # several released towers, one text

Config (``ModelConfig``, validated; unknown keys fail with their name)::

    embed_dim: null                      # shared dim; null = the text tower's output dim
    init_from: null                      # CLIP checkpoint (hub id or dir) for every tower, or null (random)
    loss: clip                           # clip | siglip: decides the logit scale/bias initialisation
    text: {name_or_path: minilm, pooling: auto, max_length: null, cache_size: 4096}
    modalities:                          # per-modality defaults (LanguageBind's) fill missing keys
      video: {width: 128, layers: 2, heads: 4, mlp_dim: 512, patch_size: 16, image_size: 96,
              num_frames: 8, temporal: true, time_embedding_std: null, patch_dropout: 0.3,
              lora: {r: 16, alpha: 16, dropout: 0.0},
              trainable: [class_embedding, patch_embedding, norms, temporal, projection]}

Train (the trainer's surface)::

    out = model({"text": captions, "video": frames})   # or {"text_emb": Tensor[B, E], ...}
    out["text"], out["video"]                            # L2-normalised Tensor[B, E]
    out["logit_scale"]["video"]                          # exp(t), clamped to <= 100 (scalar tensor)
    out["logit_bias"]["video"]                           # only when config.loss == "siglip"
    loss = ClipLoss(rank=r, world_size=w)(out["video"], out["text"], out["logit_scale"]["video"])
    groups = model.optimizer_groups(lr, weight_decay, coef_lr)   # AdamW groups; each has "lr_scale"
    model.param_groups()            # {"lora": [(name, p)], "other": [(name, p)]} (trainable only)
    model.clamp_logit_scale_()      # after each optimizer step, as open_clip does
    model.set_gradient_checkpointing(True)
    model.merge_lora()              # folds LoRA into the base weights; state_dict() is then plain

Input tensors: video ``[B, T, 3, S, S]``; depth/infrared ``[B, 3, S, S]``; audio ``[B, 3, 126, 1036]``
(3 fbank chunks), all produced by ``model.preprocess`` (one function per modality, for shard bytes
and raw files alike); ``model.preprocess_input(modality, item, train=...)`` uses the tower's sizes.

Inference::

    emb = model.encode("video", ["a.mp4", "b.mp4"])       # no_grad, chunked, CPU Tensor[N, E]
    txt = model.encode_text(["a dog barking"])
    similarity(emb, txt)                                  # cosine matrix
    zero_shot_classify(model, "audio", ["x.wav"], ["dog", "cat"], ["the sound of a {}."])
    model.save("out/dir"); LanguageBind.load("out/dir")
"""

from __future__ import annotations

import importlib
from typing import Any

# Lazy exports: ``import model.data`` (the loader) should not pay for torch + transformers imports twice
# over in every worker; the names below load their module on first use.
_EXPORTS = {
    "LanguageBind": "model.languagebind",
    "similarity": "model.languagebind",
    "zero_shot_classify": "model.languagebind",
    "ClipLoss": "model.loss",
    "SigLipLoss": "model.loss",
    "MODALITIES": "model.model_config",
    "LoraSettings": "model.model_config",
    "ModelConfig": "model.model_config",
    "TextConfig": "model.model_config",
    "TowerConfig": "model.model_config",
    "TOWER_MODALITIES": "model.model_config",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
