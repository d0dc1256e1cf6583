"""LoRA through ``peft`` on the attention projections of a tower, and merging it back for export."""

from __future__ import annotations

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from model.model_config import LoraSettings

# The projections LoRA adapts, named as in transformers' CLIPAttention. The names match both the
# spatial self-attention and the temporal attention blocks (same module class).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def add_lora(module: nn.Module, settings: LoraSettings) -> nn.Module:
    """Wrap every q/k/v/out projection under ``module`` with a LoRA adapter, in place.

    peft freezes the base weights it wraps; the caller decides the rest of the trainable set.
    """
    if settings.r == 0:
        return module
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(LORA_TARGETS),
        bias="none",
    )
    return inject_adapter_in_model(config, module)


def merge_lora(module: nn.Module) -> int:
    """Fold every LoRA adapter under ``module`` into its base layer and unwrap it; returns the count.

    Afterwards the state dict has the plain transformers names (``...q_proj.weight``).
    """
    merged = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer):
                child.merge()
                setattr(parent, name, child.get_base_layer())
                merged += 1
    return merged


def is_lora_parameter(name: str) -> bool:
    """True for the LoRA matrices (``lora_A`` / ``lora_B``) peft adds."""
    return ".lora_A." in name or ".lora_B." in name
