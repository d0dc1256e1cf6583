"""A tiny model learns to bind synthetic video clips to their captions: honest training, no mocks.

Four classes (a moving square of one of four colours), captions through the tiny text tower, the
real ClipLoss, LoRA plus the default trainable parts, AdamW at the trainer's groups. The held-out
loss must fall by a stated margin and caption retrieval must beat chance by a wide one.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from model import ClipLoss, LanguageBind, zero_shot_classify

COLOURS = {
    "red": (1.0, -1.0, -1.0),
    "green": (-1.0, 1.0, -1.0),
    "blue": (-1.0, -1.0, 1.0),
    "yellow": (1.0, 1.0, -1.0),
}
NAMES = list(COLOURS)
SIZE, FRAMES = 32, 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one intra-op thread beats two (thread hand-offs cost more than the math)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def clip(colour: str, g: torch.Generator) -> torch.Tensor:
    """``[8, 3, 32, 32]``: a 12 px square of ``colour`` sliding right over noise, from a random place."""
    video = 0.2 * torch.randn(FRAMES, 3, SIZE, SIZE, generator=g)
    y, x = (int(v) for v in torch.randint(0, SIZE - 12, (2,), generator=g))
    rgb = torch.tensor(COLOURS[colour]).view(3, 1, 1)
    for t in range(FRAMES):
        left = min(x + t, SIZE - 12)
        video[t, :, y : y + 12, left : left + 12] = rgb
    return video


def batch(g: torch.Generator, repeats: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.cat([torch.randperm(len(NAMES), generator=g) for _ in range(repeats)])
    return torch.stack([clip(NAMES[i], g) for i in labels]), labels


def held_out_loss(model: LanguageBind, loss_fn: ClipLoss, batches: list, captions: list[str]) -> float:
    model.eval()
    with torch.no_grad():
        losses = []
        for videos, labels in batches:
            out = model({"video": videos, "text": [captions[i] for i in labels]})
            losses.append(loss_fn(out["video"], out["text"], out["logit_scale"]["video"]).item())
    return sum(losses) / len(losses)


@pytest.mark.parametrize("seed", [0, 1])
def test_tiny_model_learns_to_match_clips_and_captions(seed: int) -> None:
    torch.manual_seed(seed)
    model = LanguageBind.tiny(("video",))
    captions = [f"a {name} square" for name in NAMES]
    loss_fn = ClipLoss()
    opt = torch.optim.AdamW(model.optimizer_groups(lr=3e-3, weight_decay=0.01, coef_lr=1.0))
    held_out = [batch(torch.Generator().manual_seed(100 + i)) for i in range(8)]
    before = held_out_loss(model, loss_fn, held_out, captions)
    assert abs(before - math.log(4)) < 0.3  # untrained: about chance (log 4) with 4 pairs a batch

    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(40):
        videos, labels = batch(g)  # one clip of each class: a clean InfoNCE batch
        model.train()
        out = model({"video": videos, "text": [captions[i] for i in labels]})
        loss = loss_fn(out["video"], out["text"], out["logit_scale"]["video"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.clamp_logit_scale_()

    after = held_out_loss(model, loss_fn, held_out, captions)
    assert after < 0.5 * before, (before, after)
    videos, labels = batch(torch.Generator().manual_seed(7), repeats=8)
    probs = zero_shot_classify(model, "video", videos, NAMES, ["a {} square"])
    accuracy = (probs.argmax(dim=1) == labels).float().mean().item()
    assert accuracy >= 0.75, accuracy  # chance is 0.25
