"""Where a training process sits among its peers, and how the model is spread over them.

``Dist`` is the process's place (rank, world size, device) and the few collectives the loop needs
besides the model's own: agree on a flag, wait for the others, gather small objects.

A ``Strategy`` is how the model is spread over the ranks, chosen once from the config
(``choose_strategy``): one process (nothing to do), DDP (a replica per rank, gradients averaged by
DDP), or FSDP2 (each transformer block sharded by ``fully_shard``). It answers what the loop would
otherwise ask with ``if fsdp``: what to run forward, how to skip the gradient sync while
accumulating, what to do after backward, what a checkpoint saves and loads, and where evaluation may
run. The loop in ``model.train`` reads the same under all three.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Dist:
    """Where this process sits: rank, world size, device; and the collectives the loop needs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, logs and exports."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for in one process)."""
        if self.world_size > 1:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any one of them."""
        if self.world_size == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks (a CPU tensor comes back on this process's device)."""
        if self.world_size == 1:
            return values
        values = values.to(self.device)
        dist.all_reduce(values)
        return values

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (a list of one without a process group)."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


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


class Strategy:
    """One process: the model runs as it is. The base of DDP and FSDP, which override what differs."""

    #: whether evaluation and benchmarks can run on rank 0 alone (FSDP's towers are sharded: they cannot)
    whole_model_on_rank0 = True

    def __init__(self, where: Dist) -> None:
        self.dist = where
        self.model: nn.Module | None = None
        self.wrapped: nn.Module | None = None

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training forward runs through: the model itself, or its DDP wrapper."""
        self.model, self.wrapped = model, self._wrap(model)
        return self.wrapped

    def _wrap(self, model: nn.Module) -> nn.Module:
        return model

    def gradient_sync(self, enabled: bool) -> contextlib.AbstractContextManager:
        """A context for one backward pass: ``enabled=False`` keeps gradients local (accumulation)."""
        return contextlib.nullcontext()

    def after_backward(self) -> None:
        """Whatever the wrapper leaves undone once the step's last backward has run."""

    def model_state(self) -> dict[str, torch.Tensor]:
        """The full (unsharded) state dict a checkpoint stores; called on every rank."""
        return self.model.state_dict()

    def optimizer_state(self, opt: torch.optim.Optimizer) -> dict[str, Any]:
        """The full optimizer state a checkpoint stores; called on every rank."""
        return opt.state_dict()

    def load_optimizer_state(self, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Restore what ``optimizer_state`` returned (on every rank)."""
        opt.load_state_dict(state)


class DDPStrategy(Strategy):
    """A replica per rank; DDP averages the gradients during backward."""

    def _wrap(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        device = self.dist.device
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def gradient_sync(self, enabled: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if enabled else self.wrapped.no_sync()


class FSDPStrategy(Strategy):
    """FSDP2: every transformer block and tower ``fully_shard``-ed (bf16 parameters on GPU unless fp32).

    The temperatures are scalars, which ``fully_shard`` refuses: they stay replicated and their
    gradients are averaged by hand after backward (the text tower is frozen and needs nothing).
    """

    whole_model_on_rank0 = False

    def __init__(self, where: Dist, precision: str) -> None:
        super().__init__(where)
        self.bf16 = where.device.type == "cuda" and precision != "fp32"
        self.towers: list[nn.Module] = []
        self.replicated: list[nn.Parameter] = []

    def _wrap(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        kw = {}
        if self.bf16:
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        self.towers = list(model.towers.values())
        for tower in self.towers:
            for block in _blocks(tower):
                fully_shard(block, **kw)
            fully_shard(tower, **kw)
        self.replicated = [
            p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("towers.")
        ]
        return model  # fully_shard works in place

    def gradient_sync(self, enabled: bool) -> contextlib.AbstractContextManager:
        for tower in self.towers:
            tower.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()

    def after_backward(self) -> None:
        for p in self.replicated:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)

    def model_state(self) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.model, options=_full_state(cpu_offload=True))

    def optimizer_state(self, opt: torch.optim.Optimizer) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.model, opt, options=_full_state(cpu_offload=True))

    def load_optimizer_state(self, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(self.model, opt, state, options=_full_state())


def _blocks(tower: nn.Module) -> Iterator[nn.Module]:
    """A tower's transformer blocks, the units FSDP shards one at a time."""
    yield from tower.vision.encoder.layers
    yield from tower.temporal or []


def _full_state(cpu_offload: bool = False) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload)


def choose_strategy(where: Dist, fsdp: bool, precision: str) -> Strategy:
    """One process -> ``Strategy``; several -> ``FSDPStrategy`` when ``train.fsdp``, else ``DDPStrategy``."""
    if where.world_size == 1:
        return Strategy(where)
    return FSDPStrategy(where, precision) if fsdp else DDPStrategy(where)


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
