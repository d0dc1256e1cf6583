"""Weight names between LanguageBind's released layout and vidal's module tree, and the LoRA merge.

The released ``pytorch_model.bin`` uses Hugging Face CLIP names (``text_model.*``, ``text_projection``,
``vision_model.*``, ``visual_projection``, ``logit_scale``) plus, per encoder layer of a video tower,
``temporal_embedding`` ``[1, T, D]``, ``temporal_layer_norm1`` and ``temporal_attn``. vidal keeps the same
modules under other names (``towers.<m>.vision``, ``towers.<m>.temporal.<i>``), so the mapping is a pure
rename plus two reshapes: the temporal embedding drops its leading 1, and V1.5's ``Conv3d`` patch weight
``[D, 3, 1, P, P]`` (a tube of one frame) is the ``Conv2d`` weight with a unit time axis.

LoRA checkpoints (``lora_r > 0``) were saved with peft wrapping ``vision_model.encoder``: every encoder
key gains ``base_model.model.``, and each adapted linear layer has ``lora_A.<adapter>.weight`` ``[r, in]``
and ``lora_B.<adapter>.weight`` ``[out, r]`` beside its base weight (``base_layer.weight`` in newer
peft). ``merge_peft_lora`` folds them in as peft's merge does: ``W + B @ A * alpha / r``.
"""

from __future__ import annotations

import re

import torch

ENCODER = "vision_model.encoder."
PEFT_PREFIX = ENCODER + "base_model.model."
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
_TEMPORAL = re.compile(
    r"^vision_model\.encoder\.layers\.(?P<i>\d+)\.(?P<part>temporal_embedding|temporal_layer_norm1|temporal_attn)"
    r"(?P<rest>(?:\..+)?)$"
)
_VIDAL_TEMPORAL = re.compile(
    r"^towers\.(?P<m>\w+)\.temporal\.(?P<i>\d+)\.(?P<part>time_embedding|norm|attn)(?P<rest>(?:\..+)?)$"
)
_TEMPORAL_NAMES = {
    "temporal_embedding": "time_embedding",
    "temporal_layer_norm1": "norm",
    "temporal_attn": "attn",
}
_OFFICIAL_TEMPORAL = {v: k for k, v in _TEMPORAL_NAMES.items()}
# Buffers older transformers saved with the weights; they carry no information.
IGNORED_SUFFIXES = ("position_ids",)


def merge_peft_lora(state: dict[str, torch.Tensor], lora_alpha: float) -> tuple[dict[str, torch.Tensor], int]:
    """A state dict with peft's encoder wrapper removed and every LoRA pair merged into its base weight.

    Returns ``(state, merged)``; a state dict without peft keys comes back unchanged with ``merged == 0``.
    """
    plain: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith(PEFT_PREFIX):
            key = ENCODER + key[len(PEFT_PREFIX) :]
        match = _LORA.match(key)
        if match:
            pairs.setdefault(match["module"], {})[match["ab"]] = value
            continue
        plain[key.replace(".base_layer.", ".")] = value
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise KeyError(f"LoRA weights of {module} are incomplete: found only lora_{''.join(ab)}")
        base = f"{module}.weight"
        if base not in plain:
            raise KeyError(f"LoRA weights for {module} have no base weight {base}")
        a, b = ab["A"].float(), ab["B"].float()
        scale = lora_alpha / a.shape[0]
        plain[base] = (plain[base].float() + (b @ a) * scale).to(plain[base].dtype)
    return plain, len(pairs)


def official_to_vidal(key: str, modality: str) -> str | None:
    """vidal's name for one released weight (``None``: a buffer to skip; unknown names come back unchanged)."""
    if key.endswith(IGNORED_SUFFIXES):
        return None
    if key == "logit_scale":
        return f"logit_scale.{modality}"
    if key == "visual_projection.weight":
        return f"towers.{modality}.projection.weight"
    if key == "text_projection.weight":
        return "text.projection.weight"
    if key.startswith("text_model."):
        return "text.encoder." + key[len("text_model.") :]
    match = _TEMPORAL.match(key)
    if match:
        return f"towers.{modality}.temporal.{match['i']}.{_TEMPORAL_NAMES[match['part']]}{match['rest']}"
    if key.startswith("vision_model."):
        return f"towers.{modality}.vision." + key[len("vision_model.") :]
    return key


def vidal_to_official(key: str) -> str | None:
    """The released name of one vidal weight (``None`` for weights with no place there, e.g. SigLIP bias)."""
    if key.startswith("logit_scale."):
        return "logit_scale"
    if key == "text.projection.weight":
        return "text_projection.weight"
    if key.startswith("text.encoder."):
        return "text_model." + key[len("text.encoder.") :]
    match = _VIDAL_TEMPORAL.match(key)
    if match:
        part = _OFFICIAL_TEMPORAL[match["part"]]
        return f"vision_model.encoder.layers.{match['i']}.{part}{match['rest']}"
    match = re.match(r"^towers\.\w+\.(?P<rest>.+)$", key)
    if match:
        rest = match["rest"]
        if rest == "projection.weight":
            return "visual_projection.weight"
        if rest.startswith("vision."):
            return "vision_model." + rest[len("vision.") :]
    return None


def to_vidal_value(key: str, value: torch.Tensor) -> torch.Tensor:
    """Reshape one released tensor (official name) for vidal's module."""
    if key.endswith(".temporal_embedding"):
        return value.reshape(value.shape[-2], value.shape[-1])
    if key == "vision_model.embeddings.patch_embedding.weight" and value.ndim == 5:
        if value.shape[2] != 1:
            raise ValueError(
                f"a Conv3d patch embedding with a tube of {value.shape[2]} frames is not supported"
            )
        return value[:, :, 0]
    return value


def to_official_value(key: str, value: torch.Tensor, conv3d_patch: bool) -> torch.Tensor:
    """Reshape one vidal tensor (official name) for the released module."""
    if key.endswith(".temporal_embedding"):
        return value.unsqueeze(0)
    if conv3d_patch and key == "vision_model.embeddings.patch_embedding.weight":
        return value.unsqueeze(2)
    return value
