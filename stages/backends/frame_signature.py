"""A clip's pixel signature for near-duplicate removal (``score.dedup_embedding: frames``).

The alignment model's clip embedding says what a clip shows, so two renderings of one scene are alike to
it; and the demo's ``tiny`` random model puts every clip within cosine 0.99 of every other. This
signature is computed from the clip's own 8 JPEG frames, no model, and is meant for copies: re-encoded,
resized or trimmed versions of one video.

Each frame becomes a 64 x 64 RGB thumbnail (JPEG draft decoding at a reduced scale, then a box filter).
Two parts, joined with 70 % and 30 % of the weight:

- the **picture**: the mean over the frames of the thumbnails, each with its own per-channel mean
  removed: the set and the trail of what moves through it, where and in what colour;
- the **cast**: the clip's mean colour minus its grey level (3 values), which the centring above took
  out and which tells apart two clips of one layout over backgrounds of another hue.

A mean over the frames, not the frames in order: a copy trimmed by a fifth samples its 8 frames at other
moments, so a frame-by-frame comparison falls to cosine 0.6-0.7 on the synthetic clips, and a per-pixel
median (tried as a "background" part) to 0.66 where a slow shape covers a pixel in about half the frames;
the mean moves least. Each part is divided by its length, or by a floor when shorter (``FLOOR``: RMS
0.02 of a picture with no contrast; ``CAST_FLOOR``: a near-grey clip), so JPEG noise is not blown up
to a unit vector. The joined 3,075 values are projected to ``DIM`` = 1024 by a fixed Gaussian matrix
(Johnson-Lindenstrauss: a cosine c moves by about ``(1 - c**2) / sqrt(DIM)``, 0.005 near 0.92) and
normalised: 2 KiB per clip in float16. The matrix comes from NumPy's legacy ``RandomState``, whose
stream is frozen, so signatures written by different versions of this code and of NumPy stay
comparable.

Measured (cosines to the original; four synthetic sets like ``tests/test_near_dup.py``'s, probe's frames
at 64 px short side, and the demo's 288 short clips and its 3 planted copies at its 128 px): MPEG-4
re-encodes 0.967-0.99, copies resized to 5/8 0.981-0.994, copies trimmed by a fifth at either end
0.933-0.961; distinct clips at most 0.910 (the demo: two renderings of one concept, a yellow square going
left; next 0.896). 64 px, not 32: at 32 the demo's distinct clips reached 0.924 (renderings of one
concept, and a white square on one path going up in one clip and down in the other: a mean does not see
direction) against trimmed copies from 0.927, no threshold between them; at 64 the gap is 0.910-0.933.
Hence ``dedup_threshold`` 0.92 for this signature (the model's default 0.95 would miss trimmed copies).
Cost: about 13 ms of CPU per clip at load 6-10 (the 12,291 x 1,024 projection is 50 MB, made once per
process).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image

SIZE = 64  # thumbnail side
DIM = 1024  # signature length after the projection
FLOOR = 0.02  # RMS (pixel values in 0..1) under which the picture part is not scaled up to unit length
CAST_FLOOR = 0.1  # length of the colour cast under which it is not scaled up either
CAST_WEIGHT = 0.3  # share of the signature's energy in the cast
SEED = 20161  # the projection's; changing it makes new signatures incomparable with stored ones


def thumbnails(frames: Sequence[bytes]) -> np.ndarray:
    """``[n, SIZE, SIZE, 3]`` float32 RGB in 0..1."""
    out = np.empty((len(frames), SIZE, SIZE, 3), dtype=np.float32)
    for i, data in enumerate(frames):
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (2 * SIZE, 2 * SIZE))  # JPEG: decode at a reduced scale, at least 2x the side
            out[i] = np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.BOX), dtype=np.float32)
    return out / 255.0


@lru_cache(maxsize=1)
def projection() -> np.ndarray:
    """``[SIZE * SIZE * 3 + 3, DIM]`` float32, the same in every process and version (legacy stream); SIZE and
    SEED fix it: changing either makes new signatures incomparable with stored ones."""
    rows, rng = SIZE * SIZE * 3 + 3, np.random.RandomState(SEED)
    out = np.empty((rows, DIM), dtype=np.float32)
    for start in range(0, rows, 1024):  # the stream in order, a block at a time: no float64 copy of it all
        block = out[start : start + 1024]
        block[:] = rng.standard_normal(block.shape)
    return out


def frame_signature(frames: Sequence[bytes]) -> np.ndarray:
    """``[DIM]`` float32 of unit length from a clip's JPEG frames."""
    thumbs = thumbnails(frames)
    channel_means = thumbs.mean(axis=(1, 2))  # [n, 3]
    picture = (thumbs - channel_means[:, None, None, :]).mean(axis=0).ravel()
    picture /= max(float(np.linalg.norm(picture)), FLOOR * np.sqrt(picture.size))
    cast = channel_means.mean(axis=0)
    cast -= cast.mean()
    cast /= max(float(np.linalg.norm(cast)), CAST_FLOOR)
    joined = np.concatenate([picture * np.sqrt(1 - CAST_WEIGHT), cast * np.sqrt(CAST_WEIGHT)])
    v = joined.astype(np.float32) @ projection()
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v
