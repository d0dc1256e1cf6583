"""Synthetic videos of distinct visual concepts: the embedded demo's input, the tests' fixtures and
the benchmarks' workload.

Each clip shows one coloured shape moving in one direction over a textured background, with a tone
whose pitch follows the colour and whose beat follows the shape, so that every modality carries the
concept. Titles and hashtags describe the clip, as a web video's would.
"""

from __future__ import annotations

import csv
import itertools
import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 220, 40),
    "purple": (160, 60, 200),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
TONE_HZ = {"red": 330.0, "green": 392.0, "blue": 440.0, "yellow": 523.0, "purple": 587.0, "white": 659.0}
BEAT_HZ = {"circle": 1.0, "square": 2.0, "triangle": 4.0}


@dataclass(frozen=True)
class Concept:
    colour: str
    shape: str
    motion: str

    @property
    def title(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.motion}"

    @property
    def hashtags(self) -> list[str]:
        return [self.colour, self.shape, f"moving{self.motion}"]

    @property
    def slug(self) -> str:
        return f"{self.colour}-{self.shape}-{self.motion}"


CONCEPTS = [Concept(c, s, m) for c, s, m in itertools.product(COLOURS, SHAPES, MOTIONS)]


def _shape_mask(shape: str, h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.ogrid[:h, :w]
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if shape == "square":
        return (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
    # triangle pointing up: inside if below the two slanted edges and above the base
    dy = yy - (cy - r)
    return (yy <= cy + r) & (dy >= 0) & (np.abs(xx - cx) <= dy * 0.6)


def render_frames(concept: Concept, *, n_frames: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """RGB frames [n, h, w, 3] uint8 of one concept: the shape crosses most of the frame."""
    w, h = size
    rng = np.random.default_rng(seed)
    base = rng.integers(10, 70, size=3)
    tex = rng.normal(0, 8, size=(h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
    background = np.clip(base + tex, 0, 255).astype(np.uint8)
    r = min(w, h) * rng.uniform(0.10, 0.16)
    dx, dy = MOTIONS[concept.motion]
    span_x, span_y = (w - 2 * r) * 0.8, (h - 2 * r) * 0.8
    cx0 = w / 2 - dx * span_x / 2 + (rng.uniform(-0.1, 0.1) * w if dx == 0 else 0)
    cy0 = h / 2 - dy * span_y / 2 + (rng.uniform(-0.1, 0.1) * h if dy == 0 else 0)
    colour = np.array(COLOURS[concept.colour], dtype=np.uint8)
    frames = np.empty((n_frames, h, w, 3), dtype=np.uint8)
    for i in range(n_frames):
        t = i / max(n_frames - 1, 1)
        frame = background.copy()
        frame[_shape_mask(concept.shape, h, w, cx0 + dx * span_x * t, cy0 + dy * span_y * t, r)] = colour
        frames[i] = frame
    return frames


def tone(concept: Concept, seconds: float, rate: int) -> np.ndarray:
    """A mono float32 tone for the concept: pitch from the colour, beat from the shape."""
    t = np.arange(int(seconds * rate)) / rate
    beat = 0.5 + 0.5 * (np.sin(2 * np.pi * BEAT_HZ[concept.shape] * t) > 0)
    return (0.3 * beat * np.sin(2 * np.pi * TONE_HZ[concept.colour] * t)).astype(np.float32)


def encode_video(
    path: str | Path,
    frames: np.ndarray,
    fps: int,
    audio: np.ndarray | None = None,
    audio_rate: int = 44_100,
    gop: int | None = None,
    codec: str = "libx264",
) -> None:
    """Encode RGB frames (and optional mono float audio) to an MP4 file: H.264 + AAC by default.

    ``gop`` sets the keyframe interval in frames (None: the encoder's default); a value above the
    frame count gives a single keyframe, the worst case for seeking.
    """
    n, h, w, _ = frames.shape
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        if gop is not None:
            vs.codec_context.gop_size = gop
            if codec == "libx264":
                vs.codec_context.options = {"x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        a_s = None
        if audio is not None:
            a_s = out.add_stream("aac", rate=audio_rate, layout="mono")
        for f in frames:
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(f[: vs.height, : vs.width]), format="rgb24"
            )
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if a_s is not None:
            chunk = 1024
            for i in range(0, len(audio), chunk):
                piece = audio[i : i + chunk][None, :].astype(np.float32)
                af = av.AudioFrame.from_ndarray(piece, format="fltp", layout="mono")
                af.sample_rate = audio_rate
                af.pts = i
                af.time_base = Fraction(1, audio_rate)
                for packet in a_s.encode(af):
                    out.mux(packet)
            for packet in a_s.encode():
                out.mux(packet)


def make_clip(
    path: str | Path,
    concept: Concept,
    *,
    seconds: float = 2.0,
    fps: int = 15,
    size: tuple[int, int] = (320, 240),
    audio: bool = True,
    seed: int = 0,
    gop: int | None = None,
) -> None:
    """Render and encode one concept clip."""
    frames = render_frames(concept, n_frames=max(1, round(seconds * fps)), size=size, seed=seed)
    sound = tone(concept, seconds, 44_100) if audio else None
    encode_video(path, frames, fps, sound, gop=gop)


def make_demo_media(
    out_dir: str | Path,
    *,
    per_concept: int = 1,
    seconds: float = 2.0,
    fps: int = 15,
    size: tuple[int, int] = (320, 240),
    as_urls: bool = False,
) -> Path:
    """Generate the demo clips once and a CSV list of them; returns the list's path.

    The list has ``path`` (or ``url`` as ``file://`` when ``as_urls``), ``title``, ``hashtags`` and
    ``description`` columns: the ``files`` input of the pipeline. Reuses clips made with the same
    parameters.
    """
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    params = {"per_concept": per_concept, "seconds": seconds, "fps": fps, "size": list(size), "v": 1}
    list_path = out / ("videos_urls.csv" if as_urls else "videos.csv")
    stamp = out / "params.json"
    if list_path.exists() and stamp.exists() and json.loads(stamp.read_text()) == params:
        return list_path
    rows = []
    for k in range(per_concept):
        for i, concept in enumerate(CONCEPTS):
            clip = out / f"{concept.slug}-{k}.mp4"
            if not clip.exists() or not stamp.exists() or json.loads(stamp.read_text()) != params:
                make_clip(clip, concept, seconds=seconds, fps=fps, size=size, seed=1000 * k + i)
            rows.append(
                {
                    ("url" if as_urls else "path"): clip.as_uri() if as_urls else str(clip),
                    "title": concept.title,
                    "hashtags": " ".join(f"#{t}" for t in concept.hashtags),
                    "description": f"Synthetic clip {k} of {concept.title}.",
                }
            )
    stamp.write_text(json.dumps(params))
    with open(list_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return list_path
