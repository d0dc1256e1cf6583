"""Where a training process sits among its peers, and the collectives the loop needs beyond DDP's."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class Dist:
    """Where this process sits: rank, world size, device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")


def setup_distributed(device: str = "auto") -> Dist:
    """Join the process group set up by Ray Train, or start one under ``torchrun``; else one process."""
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() and device != "cpu" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    return Dist(rank, world, local, torch.device(device))


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Scale gradients to a global norm of at most ``max_norm``; returns the norm before clipping.

    Works on a mix of FSDP-sharded (DTensor) and plain gradients, which ``clip_grad_norm_`` refuses.
    """
    grads = [p.grad for p in params if p.grad is not None]
    squares = []
    for sharded in (True, False):
        part = [g for g in grads if hasattr(g, "full_tensor") == sharded]
        if part:
            norm = torch.nn.utils.get_total_norm(part)
            squares.append((norm.full_tensor() if hasattr(norm, "full_tensor") else norm).float() ** 2)
    total = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    scale = max_norm / (total + 1e-6)
    if scale < 1.0:
        for g in grads:
            g.mul_(scale)
    return total


def gather_objects(obj: Any, world_size: int) -> list[Any]:
    """Every rank's ``obj``, in rank order (a list of one without a process group)."""
    if world_size == 1:
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out
