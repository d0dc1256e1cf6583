"""A tiny LanguageBind video model trained on CPU in seconds to bind synthetic clips to their captions.

Used by the score and near-duplicate tests, which need embeddings that mean something: random weights
would order matched and shuffled captions by chance. The clips are ``pipeline.synthetic`` renderings
(a coloured shape crossing a textured background), passed through the same path the score stage uses
(JPEG frames -> ``LanguageBind.preprocess_input``), and the captions are their concepts' titles through
the frozen tiny text tower. Training is plain InfoNCE, one clip of each concept per step.
"""

from __future__ import annotations

import tempfile
from functools import cache
from pathlib import Path

import numpy as np
import torch

from contracts.encodings import encode_jpeg
from pipeline.synthetic import Concept, render_frames

CONCEPTS = [
    Concept(c, s, "right")
    for c in ("red", "green", "blue", "yellow", "purple", "white")
    for s in ("circle", "square")
]
SIZE = (64, 48)  # rendered; the tiny tower sees 32 x 32


def jpeg_frames(concept: Concept, seed: int, n: int = 8, size: tuple[int, int] = SIZE) -> list[bytes]:
    """``n`` JPEG frames of one rendering of ``concept`` (probe's encoding)."""
    frames = render_frames(concept, n_frames=n, size=size, seed=seed)
    return [encode_jpeg(f, 90) for f in frames]


def train_tiny(steps: int = 120, seed: int = 0, pool: int = 6) -> torch.nn.Module:
    """Train the tiny model: ``pool`` renderings per concept, ``steps`` InfoNCE steps of one clip per concept."""
    from model import ClipLoss, LanguageBind

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread hand-offs cost more than the math
    try:
        torch.manual_seed(seed)
        model = LanguageBind.tiny(("video",))
        captions = [c.title for c in CONCEPTS]
        clips = torch.stack(
            [
                torch.stack(
                    [model.preprocess_input("video", jpeg_frames(c, 1000 * k + i)) for k in range(pool)]
                )
                for i, c in enumerate(CONCEPTS)
            ]
        )  # [concepts, pool, T, 3, 32, 32]
        text = model.encode_text(captions)
        loss_fn = ClipLoss()
        opt = torch.optim.AdamW(model.optimizer_groups(lr=3e-3, weight_decay=0.01, coef_lr=1.0))
        g = torch.Generator().manual_seed(seed)
        rows = torch.arange(len(CONCEPTS))
        model.train()
        for _ in range(steps):
            pick = torch.randint(0, pool, (len(CONCEPTS),), generator=g)
            out = model({"video": clips[rows, pick], "text_emb": text})
            loss = loss_fn(out["video"], out["text"], out["logit_scale"]["video"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.clamp_logit_scale_()
        model.eval()
        return model
    finally:
        torch.set_num_threads(threads)


@cache
def trained_export() -> Path:
    """A ``vidal:`` export directory of the trained tiny model, made once per test process."""
    path = Path(tempfile.mkdtemp(prefix="vidal-align-")) / "export"
    train_tiny().save(path)
    return path


def cosine_table(model: torch.nn.Module, seeds: list[int]) -> np.ndarray:
    """``[renderings, concepts]`` cosine of held-out renderings against every caption (for diagnostics)."""
    videos = [jpeg_frames(c, s) for s in seeds for c in CONCEPTS]
    v = model.encode("video", videos)
    t = model.encode_text([c.title for c in CONCEPTS])
    return (v @ t.T).numpy()
