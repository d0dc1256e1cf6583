"""ClipLoss / SigLipLoss across 2 real gloo processes equal the single-process loss on the whole batch.

Each process embeds its half of a batch with the same small network, computes the loss, backprops
and averages gradients over processes (what DDP does). The mean loss and the averaged gradients must
match one process computing the loss on the concatenated batch.
"""

from __future__ import annotations

import os
import socket

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from model.loss import ClipLoss, SigLipLoss

WORLD, LOCAL_BATCH, DIM = 2, 4, 8
CLIP_MODES = [(False, False), (False, True), (True, True), (True, False)]  # (local_loss, gather_with_grad)


def make_problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Two linear "towers" and a logit scale/bias, plus a full batch of paired inputs (seeded)."""
    torch.manual_seed(0)
    net = nn.ModuleDict({"a": nn.Linear(6, DIM), "b": nn.Linear(5, DIM)})
    net.logit_scale = nn.Parameter(torch.tensor(2.0))
    net.logit_bias = nn.Parameter(torch.tensor(-1.0))
    xa, xb = torch.randn(WORLD * LOCAL_BATCH, 6), torch.randn(WORLD * LOCAL_BATCH, 5)
    return net, xa, xb


def run_loss(net: nn.Module, loss: nn.Module, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
    a, b = F.normalize(net["a"](xa), dim=-1), F.normalize(net["b"](xb), dim=-1)
    if isinstance(loss, SigLipLoss):
        return loss(a, b, net.logit_scale.exp(), net.logit_bias)
    return loss(a, b, net.logit_scale.exp())


def grad_of(p: nn.Parameter) -> torch.Tensor:
    return torch.zeros_like(p) if p.grad is None else p.grad.clone()  # ClipLoss has no bias


def single_process(loss: nn.Module) -> tuple[float, dict[str, torch.Tensor]]:
    net, xa, xb = make_problem()
    value = run_loss(net, loss, xa, xb)
    value.backward()
    return value.item(), {n: grad_of(p) for n, p in net.named_parameters()}


def worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)  # two processes on two cores
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results = {}
        losses = {f"clip_{ll}_{gwg}": ClipLoss(ll, gwg, True, rank, WORLD) for ll, gwg in CLIP_MODES}
        losses["siglip"] = SigLipLoss(rank, WORLD)
        for name, loss in losses.items():
            net, xa, xb = make_problem()
            part = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
            value = run_loss(net, loss, xa[part], xb[part])
            value.backward()
            mean = value.detach().clone()
            dist.all_reduce(mean)
            grads = {}
            for n, p in net.named_parameters():
                g = grad_of(p)
                dist.all_reduce(g)
                grads[n] = g / WORLD  # DDP averages gradients over processes
            results[name] = (mean.item() / WORLD, grads)
        if rank == 0:
            torch.save(results, os.path.join(out_dir, "results.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def distributed(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("dist")
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return torch.load(out / "results.pt")


@pytest.mark.parametrize(("local_loss", "gather_with_grad"), CLIP_MODES[:3])
def test_clip_loss_and_gradients_match_single_process(
    distributed, local_loss: bool, gather_with_grad: bool
) -> None:
    ref_loss, ref_grads = single_process(ClipLoss())
    loss, grads = distributed[f"clip_{local_loss}_{gather_with_grad}"]
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for name, ref in ref_grads.items():
        torch.testing.assert_close(grads[name], ref, atol=1e-6, rtol=1e-4, msg=name)


def test_local_loss_without_gather_grad_is_the_documented_approximation(distributed) -> None:
    ref_loss, ref_grads = single_process(ClipLoss())
    loss, grads = distributed["clip_True_False"]
    assert loss == pytest.approx(ref_loss, rel=1e-5)  # same loss value ...
    assert not torch.allclose(grads["a.weight"], ref_grads["a.weight"], atol=1e-4)  # ... partial gradient
    torch.testing.assert_close(grads["logit_scale"], ref_grads["logit_scale"], atol=1e-6, rtol=1e-4)


def test_siglip_loss_and_gradients_match_single_process(distributed) -> None:
    ref_loss, ref_grads = single_process(SigLipLoss())
    loss, grads = distributed["siglip"]
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for name, ref in ref_grads.items():
        torch.testing.assert_close(grads[name], ref, atol=1e-6, rtol=1e-4, msg=name)


def test_single_process_clip_loss_matches_its_definition() -> None:
    torch.manual_seed(1)
    a, b = F.normalize(torch.randn(5, DIM), dim=-1), F.normalize(torch.randn(5, DIM), dim=-1)
    logits = 10.0 * a @ b.T
    expected = 0.0
    for i in range(5):  # symmetric InfoNCE written out row by row
        expected += -torch.log_softmax(logits[i], 0)[i] - torch.log_softmax(logits[:, i], 0)[i]
    assert ClipLoss()(a, b, torch.tensor(10.0)).item() == pytest.approx(expected.item() / 10, rel=1e-5)
    pairs = 10.0 * a @ b.T - 10.0
    signs = 2 * torch.eye(5) - 1
    siglip = sum(-F.logsigmoid(signs[i, j] * pairs[i, j]) for i in range(5) for j in range(5)) / 5
    assert SigLipLoss()(a, b, torch.tensor(10.0), torch.tensor(-10.0)).item() == pytest.approx(
        siglip.item(), rel=1e-5
    )
