"""Scene-cut detection and motion on low-resolution frames, online, for the clip stage.

Every decoded frame is shrunk once (one single-threaded swscale call to a short side of ~36 px) and
compared with the previous one in HSV: the mean absolute difference of hue, saturation and value (the
"content" score PySceneDetect's ContentDetector uses). A frame starts a new scene when its score is
above an absolute floor *and* ``adaptive_ratio`` times the mean score of the frames before it, so a
shaky or fast-moving shot (high scores everywhere) needs a proportionally larger jump. Fades through
black are caught separately: after a run of near-black frames, the first frame with content again
starts a scene. The detector is causal (it only looks back), so the clip stage can close a clip the
moment its end is seen and keep at most one clip's frames in memory.

Measured against PySceneDetect in bench/bench_clip.py (results in bench/RESULTS.md, "Clipping").
"""

from __future__ import annotations

from collections import deque

import numpy as np
from PIL import Image

ANALYSIS_SHORT_SIDE = 36


def hsv(small_rgb: np.ndarray) -> np.ndarray:
    """HSV planes (int16, H scaled to 0-255 by PIL) of a small RGB frame."""
    return np.asarray(Image.fromarray(small_rgb).convert("HSV"), dtype=np.int16)


def grey(small_rgb: np.ndarray) -> np.ndarray:
    """Luma (float32, 0-255) of a small RGB frame."""
    return small_rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


class CutDetector:
    """Feed frames in order with ``push``; it answers whether each frame starts a new scene.

    ``min_content``: the absolute floor of the content score (0-255 scale) for a cut;
    ``adaptive_ratio``: how many times the recent mean score a cut must reach; ``window``: how many
    earlier frames make that mean; ``min_gap``: frames a scene lasts at least (no cut right after a
    cut); ``black_level``: mean value (0-255) below which a frame counts as black (fade handling).
    """

    def __init__(
        self,
        *,
        min_content: float = 15.0,
        adaptive_ratio: float = 3.0,
        window: int = 15,
        min_gap: int = 4,
        black_level: float = 18.0,
    ):
        self.min_content = min_content
        self.adaptive_ratio = adaptive_ratio
        self.min_gap = min_gap
        self.black_level = black_level
        self.recent: deque[float] = deque(maxlen=window)
        self.prev: np.ndarray | None = None
        self.since_cut = 0
        self.in_black = False
        self.seen_content = False  # a fade-in at the very start is not a cut
        self.scores: list[float] = []  # per frame, for the benchmark and tests

    def push(self, small_rgb: np.ndarray) -> bool:
        cur = hsv(small_rgb)
        score = float(np.abs(cur - self.prev).mean()) if self.prev is not None else 0.0
        self.prev = cur
        self.scores.append(score)
        self.since_cut += 1
        black = float(cur[..., 2].mean()) < self.black_level
        cut = False
        if self.since_cut > self.min_gap and self.seen_content:
            if self.in_black and not black:
                cut = True  # out of a fade through black
            elif score >= self.min_content and not (black or self.in_black):  # dark hues are noise
                baseline = max(float(np.mean(self.recent)) if self.recent else 0.0, 1.0)
                cut = score >= self.adaptive_ratio * baseline
        self.in_black = black
        self.seen_content |= not black
        if cut:
            self.since_cut = 0
        else:
            self.recent.append(score)  # a cut's own jump would raise the bar for the next one
        return cut


class MotionMeter:
    """Mean absolute luma difference between consecutive frames, in grey levels per 0.1 s.

    Normalised by the time between the frames so that the same scene scores alike at 15 and 60 fps.
    ``reset`` starts a new clip (a cut's jump is not motion).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prev: tuple[float, np.ndarray] | None = None
        self.total = 0.0
        self.pairs = 0

    def push(self, t: float, small_rgb: np.ndarray) -> None:
        g = grey(small_rgb)
        if self.prev is not None and t > self.prev[0]:
            self.total += float(np.abs(g - self.prev[1]).mean()) * 0.1 / (t - self.prev[0])
            self.pairs += 1
        self.prev = (t, g)

    @property
    def value(self) -> float:
        return round(self.total / self.pairs, 4) if self.pairs else 0.0
