"""A tiny model learns to bind synthetic video clips to their captions: honest training, no mocks.

Four classes (a square drifting inside one quadrant), captions through the tiny text tower, the
real ClipLoss, LoRA plus the default trainable parts, AdamW at the trainer's groups. The held-out
loss must fall by a stated margin and caption retrieval must beat chance by a wide one.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from model import ClipLoss, LanguageBind, zero_shot_classify

QUADRANTS = {"top left": (0, 0), "top right": (0, 1), "bottom left": (1, 0), "bottom right": (1, 1)}
NAMES = list(QUADRANTS)
SIZE, FRAMES = 32, 8


def clip(quadrant: str, g: torch.Generator) -> torch.Tensor:
    """``[8, 3, 32, 32]``: a coloured 12 px square drifting one pixel every other frame in its quadrant."""
    row, col = QUADRANTS[quadrant]
    video = torch.full((FRAMES, 3, SIZE, SIZE), -1.0) + 0.1 * torch.randn(FRAMES, 3, SIZE, SIZE, generator=g)
    y = row * 16 + int(torch.randint(0, 4, (1,), generator=g))
    x = col * 16 + int(torch.randint(0, 3, (1,), generator=g))
    colour = 0.5 + torch.rand(3, 1, 1, generator=g)
    for t in range(FRAMES):
        video[t, :, y : y + 12, x + t // 4 : x + t // 4 + 12] = colour
    return video


def batch(g: torch.Generator, repeats: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.cat([torch.randperm(4, generator=g) for _ in range(repeats)])
    return torch.stack([clip(NAMES[i], g) for i in labels]), labels


def held_out_loss(model: LanguageBind, loss_fn: ClipLoss, batches: list, captions: list[str]) -> float:
    model.eval()
    with torch.no_grad():
        losses = []
        for videos, labels in batches:
            out = model({"video": videos, "text": [captions[i] for i in labels]})
            losses.append(loss_fn(out["video"], out["text"], out["logit_scale"]["video"]).item())
    return sum(losses) / len(losses)


def test_tiny_model_learns_to_match_clips_and_captions() -> None:
    torch.manual_seed(0)
    model = LanguageBind.tiny(("video",))
    captions = [f"a square in the {name}" for name in NAMES]
    loss_fn = ClipLoss()
    opt = torch.optim.AdamW(model.optimizer_groups(lr=3e-3, weight_decay=0.01, coef_lr=1.0))
    held_out = [batch(torch.Generator().manual_seed(100 + i)) for i in range(8)]
    before = held_out_loss(model, loss_fn, held_out, captions)
    assert abs(before - math.log(4)) < 0.3  # untrained: about chance (log 4) with 4 pairs a batch

    g = torch.Generator().manual_seed(1)
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
    probs = zero_shot_classify(model, "video", videos, NAMES, ["a square in the {}"])
    accuracy = (probs.argmax(dim=1) == labels).float().mean().item()
    assert accuracy >= 0.75, accuracy  # chance is 0.25
