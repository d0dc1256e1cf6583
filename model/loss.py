"""Contrastive losses between a modality's embeddings and the text embeddings.

Inputs are L2-normalised ``[B, E]`` features per process and a positive ``logit_scale`` (already
exponentiated, as the model returns it). Across processes both losses are exact under DDP's gradient
averaging: the mean of the per-rank losses and the averaged gradients equal the single-process loss
and gradients on the concatenated batch (``tests/test_loss_distributed.py`` checks this on gloo).
The one approximation is ``ClipLoss(local_loss=True, gather_with_grad=False)`` (see there).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import nn


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient times ``factor`` in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:  # type: ignore[override]
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.factor, None


def gather_features(
    x: torch.Tensor, rank: int, world_size: int, with_grad: bool, local_grad_scale: float = 1.0
) -> torch.Tensor:
    """All ranks' features concatenated in rank order, ``[world_size * B, E]``.

    ``with_grad``: gradients flow to every rank's features (a reduce-scatter in backward). Otherwise
    only the local slice carries a gradient, multiplied by ``local_grad_scale``.
    """
    if world_size == 1:
        return x
    if with_grad:
        return torch.cat(dist_fn.all_gather(x), dim=0)
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.detach())
    parts[rank] = x if local_grad_scale == 1.0 else _ScaleGrad.apply(x, local_grad_scale)
    return torch.cat(parts, dim=0)


class ClipLoss(nn.Module):
    """Symmetric InfoNCE (CLIP) over the global batch.

    - ``local_loss``: each rank scores only its own rows against all columns (B x WB logits instead
      of WB x WB); the mean over ranks is the global loss.
    - ``gather_with_grad``: gathered features carry gradients back to their ranks (one collective in
      backward). With ``local_loss=False`` it is not needed for exactness: every rank holds the whole
      loss, so the local slice's gradient is scaled by ``world_size`` to what DDP's mean expects. With
      ``local_loss=True`` and no ``gather_with_grad``, the terms where a rank's features are the
      *columns* of another rank's rows are dropped (cheaper, approximate; open_clip's trade-off).
    - ``cache_labels``: keep the label tensor between steps (fixed batch size).
    """

    def __init__(
        self,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels
        self.rank = rank
        self.world_size = world_size
        self._labels: dict[tuple[torch.device, int], torch.Tensor] = {}

    def labels(self, batch: int, device: torch.device) -> torch.Tensor:
        """Index of each row's positive column in the logits."""
        key = (device, batch)
        if key in self._labels:
            return self._labels[key]
        labels = torch.arange(batch, device=device)
        if self.local_loss:
            labels = labels + batch * self.rank
        if self.cache_labels:
            self._labels[key] = labels
        return labels

    def logits(
        self, a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits_a_to_b, logits_b_to_a)``: local rows x global columns, or global x global."""
        if self.world_size == 1:
            logits = logit_scale * a @ b.T
            return logits, logits.T
        # Without local_loss each rank computes the whole loss, but (without gather_with_grad) only its
        # slice has a gradient: scale it by W so that DDP's mean over ranks gives the full-batch gradient.
        scale = 1.0 if self.local_loss else float(self.world_size)
        all_a = gather_features(a, self.rank, self.world_size, self.gather_with_grad, scale)
        all_b = gather_features(b, self.rank, self.world_size, self.gather_with_grad, scale)
        if self.local_loss:
            return logit_scale * a @ all_b.T, logit_scale * b @ all_a.T
        logits = logit_scale * all_a @ all_b.T
        return logits, logits.T

    def forward(
        self, features_a: torch.Tensor, features_b: torch.Tensor, logit_scale: torch.Tensor
    ) -> torch.Tensor:
        logits_a, logits_b = self.logits(features_a, features_b, logit_scale)
        labels = self.labels(logits_a.shape[0], logits_a.device)
        return (F.cross_entropy(logits_a, labels) + F.cross_entropy(logits_b, labels)) / 2


class SigLipLoss(nn.Module):
    """Sigmoid loss (SigLIP): every (row, column) pair is an independent binary match/no-match.

    The model holds a learnable scale and bias (init ``t' = log 10``, ``b = -10``). Each rank scores
    its rows against every rank's columns (gathered with gradients) and normalises by its own batch,
    as SigLIP does, so the mean over ranks is the single-process loss.
    """

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        self.rank = rank
        self.world_size = world_size

    def forward(
        self,
        features_a: torch.Tensor,
        features_b: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor,
    ) -> torch.Tensor:
        n = features_a.shape[0]
        all_b = gather_features(features_b, self.rank, self.world_size, with_grad=True)
        logits = logit_scale * features_a @ all_b.T + logit_bias
        # +1 on this rank's diagonal block (the true pairs), -1 elsewhere
        signs = -torch.ones_like(logits)
        idx = torch.arange(n, device=logits.device)
        signs[idx, idx + n * self.rank] = 1.0
        return -F.logsigmoid(signs * logits).sum() / n
