"""A clip's pixel signature for near-duplicate removal (``score.dedup_embedding: frames``).

The alignment model's clip embedding says what a clip shows, so two renderings of one scene are alike to
it; and the demo's ``tiny`` random model puts every clip within cosine 0.99 of every other. This
signature is computed from the clip's own 8 JPEG frames, no model, and is meant for copies: re-encoded,
resized or trimmed versions of one video.

Each frame becomes a 32 x 32 RGB thumbnail (JPEG draft decoding at 1/2-1/8 scale, then a box filter),
with each channel's mean removed (a colour cast or a brightness change moves every pixel alike). Two
parts, each scaled to unit length, then joined:

- the **layout**: the per-pixel median over the frames, what stays put (the background, the set);
- the **trail**: the frames' mean minus that median, where and in what colour things move.

Both are statistics over the frames, not the frames in order: a copy trimmed by a fifth samples its 8
frames at other moments, so a frame-by-frame comparison of the two falls to cosine 0.6-0.7 on the
synthetic clips, while their medians and means barely move. A part whose RMS is under ``FLOOR`` (a
still picture's trail, a flat frame's layout) is divided by the floor instead of its own length, so
JPEG noise is not blown up to a unit vector. The joined 6,144 values are projected to ``DIM`` = 1024 by a
fixed Gaussian matrix (Johnson-Lindenstrauss: a cosine c moves by about ``(1 - c**2) / sqrt(DIM)``,
0.003 near 0.95; at 512 it moved copies by up to 0.015) and normalised: 2 KiB per clip in float16.
The matrix comes from NumPy's legacy ``RandomState``, whose stream is frozen, so signatures written by
different versions of this code and of NumPy stay comparable.

Measured on synthetic clips (four sets like ``tests/test_near_dup.py``'s, probe's frames at 64 px short
side; cosines to the original): MPEG-4 re-encodes 0.938-0.98, copies resized to 5/8 0.976-0.99, copies
trimmed by a fifth at either end 0.945-0.955; other renderings of the same concept (another size, place
and background) at most 0.864; other concepts over the identical background 0.28-0.91, except a shape
crossing the same path the other way (0.968: medians and means do not see direction). Over the demo's
297 clips the closest two distinct ones (the same yellow square on the same path over backgrounds of
another hue, which the per-channel centring removes) measure 0.949, and only three pairs 0.9 or more.
Hence ``dedup_threshold`` 0.93 for this signature; the model's default 0.95 would miss
trimmed copies. Cost: about 5 ms of CPU per clip (the projection is most of it).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image

SIZE = 32  # thumbnail side
DIM = 1024  # signature length after the projection
FLOOR = 0.02  # RMS (pixel values in 0..1) under which a part is not scaled up to unit length
SEED = 20161  # the projection's; changing it makes new signatures incomparable with stored ones


def thumbnails(frames: Sequence[bytes]) -> np.ndarray:
    """``[n, SIZE, SIZE, 3]`` float32 in 0..1, each frame's per-channel mean removed."""
    out = np.empty((len(frames), SIZE, SIZE, 3), dtype=np.float32)
    for i, data in enumerate(frames):
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (2 * SIZE, 2 * SIZE))  # JPEG: decode at a reduced scale, at least 2x the side
            out[i] = np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.BOX), dtype=np.float32)
    out /= 255.0
    out -= out.mean(axis=(1, 2), keepdims=True)
    return out


@lru_cache(maxsize=1)
def projection() -> np.ndarray:
    """``[2 * SIZE * SIZE * 3, DIM]`` float32, the same in every process and version (legacy stream)."""
    return np.random.RandomState(SEED).standard_normal((2 * SIZE * SIZE * 3, DIM)).astype(np.float32)


def _scaled(part: np.ndarray) -> np.ndarray:
    flat = part.ravel()
    return flat / max(float(np.linalg.norm(flat)), FLOOR * np.sqrt(flat.size))


def frame_signature(frames: Sequence[bytes]) -> np.ndarray:
    """``[DIM]`` float32 of unit length (zeros for frames without any contrast) from a clip's JPEG frames."""
    thumbs = thumbnails(frames)
    layout = np.median(thumbs, axis=0)
    trail = thumbs.mean(axis=0) - layout
    joined = np.concatenate([_scaled(layout), _scaled(trail)]) * np.float32(np.sqrt(0.5))
    v = joined @ projection()
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v
