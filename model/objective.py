"""The training objective: each modality's contrastive loss against the text, summed over modalities.

With one modality every sample has it and the loss is ``model.loss``'s ``ClipLoss`` or ``SigLipLoss``.
With several, a batch carries each modality for the samples that have it (``batch["valid"]``,
zeros elsewhere so every rank runs the same collectives); the masked losses below score only valid
pairs and equal the plain ones when every sample is valid.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from model.loss import ClipLoss, SigLipLoss, gather_features


def _gather_mask(valid: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size == 1:
        return valid
    parts = [torch.empty_like(valid) for _ in range(world_size)]
    dist.all_gather(parts, valid.contiguous())
    return torch.cat(parts)


def masked_clip_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: torch.Tensor,
    valid: torch.Tensor,
    rank: int = 0,
    world_size: int = 1,
    gather_with_grad: bool = False,
) -> torch.Tensor:
    """Symmetric InfoNCE over the valid rows of the global batch (``ClipLoss(local_loss=False)`` semantics)."""
    all_a = gather_features(a, rank, world_size, gather_with_grad, float(world_size))
    all_b = gather_features(b, rank, world_size, gather_with_grad, float(world_size))
    keep = _gather_mask(valid.to(a.device), world_size).nonzero().squeeze(1)
    if keep.numel() == 0:  # nobody has this modality in this step: a zero that keeps the graph
        return (a.sum() + b.sum()) * 0.0
    logits = scale * all_a[keep] @ all_b[keep].T
    labels = torch.arange(keep.numel(), device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def masked_siglip_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    valid: torch.Tensor,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """SigLIP over the valid pairs: this rank's valid rows against every rank's valid columns."""
    valid = valid.to(a.device)
    all_b = gather_features(b, rank, world_size, with_grad=True)
    all_valid = _gather_mask(valid, world_size)
    rows = valid.nonzero().squeeze(1)
    cols = all_valid.nonzero().squeeze(1)
    if rows.numel() == 0 or cols.numel() == 0:
        return (a.sum() + b.sum()) * 0.0
    logits = scale * a[rows] @ all_b[cols].T + bias
    # column position of each local valid row among the gathered valid columns
    offset = int(all_valid[: a.shape[0] * rank].sum())
    signs = -torch.ones_like(logits)
    idx = torch.arange(rows.numel(), device=a.device)
    signs[idx, offset + idx] = 1.0
    return -F.logsigmoid(signs * logits).sum() / rows.numel()


class Objective:
    """``objective(features, valid) -> (total, {modality: loss})`` for a model's ``forward`` output."""

    def __init__(
        self,
        kind: str,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.kind, self.rank, self.world_size = kind, rank, world_size
        self.gather_with_grad = gather_with_grad
        self.clip = ClipLoss(
            local_loss, gather_with_grad, cache_labels=True, rank=rank, world_size=world_size
        )
        self.siglip = SigLipLoss(rank=rank, world_size=world_size)

    def __call__(
        self, features: dict[str, Any], valid: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        losses = {}
        text = features["text"].float()
        for m, scale in features["logit_scale"].items():
            x = features[m].float()
            mask = (valid or {}).get(m)
            bias = features.get("logit_bias", {}).get(m)
            if self.kind == "siglip":
                if mask is None:
                    losses[m] = self.siglip(x, text, scale, bias)
                else:
                    losses[m] = masked_siglip_loss(x, text, scale, bias, mask, self.rank, self.world_size)
            elif mask is None:
                losses[m] = self.clip(x, text, scale)
            else:
                losses[m] = masked_clip_loss(
                    x, text, scale, mask, self.rank, self.world_size, self.gather_with_grad
                )
        return sum(losses.values()), losses
