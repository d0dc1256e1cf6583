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
from PIL import Image

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


def scene_frames(
    concept: Concept, *, n_frames: int, size: tuple[int, int], seed: int, still: bool
) -> np.ndarray:
    """One scene of a long video: the concept over a background tinted by ``seed``, so that neighbouring
    scenes differ as a cut does; ``still`` holds the first frame (a slideshow's picture)."""
    if still:
        frames = render_frames(concept, n_frames=1, size=size, seed=seed).repeat(n_frames, axis=0)
    else:
        frames = render_frames(concept, n_frames=n_frames, size=size, seed=seed)
    tint = np.random.default_rng(seed).integers(-40, 90, size=3)
    return np.clip(frames.astype(np.int16) + tint, 0, 255).astype(np.uint8)


def make_long_video(
    path: str | Path,
    concepts: list[Concept],
    scene_seconds: list[float],
    *,
    fps: int = 15,
    size: tuple[int, int] = (320, 240),
    seed: int = 0,
    still: bool = False,
    audio: bool = True,
) -> list[float]:
    """A video of one scene per concept, hard cuts between them, each scene with its concept's tone;
    ``still``: every scene a still picture (a slideshow with music). Returns the cut times (seconds)."""
    lengths = [max(1, round(s * fps)) for s in scene_seconds]
    frames = np.concatenate(
        [
            scene_frames(c, n_frames=n, size=size, seed=seed + i, still=still)
            for i, (c, n) in enumerate(zip(concepts, lengths))
        ]
    )
    sound = np.concatenate([tone(c, n / fps, 44_100) for c, n in zip(concepts, lengths)]) if audio else None
    encode_video(path, frames, fps, sound)
    return [float(t) / fps for t in np.cumsum(lengths)[:-1]]


LONG_SCENES = ((3.0, 5.0, 9.0), (6.0, 6.0, 6.0), (4.0, 9.0, 5.0), (5.0, 3.0, 9.0))


def long_demo_videos(count: int) -> list[tuple[str, list[Concept], list[float], bool]]:
    """(slug, scene concepts, scene lengths, still) of the demo's long videos: ``count`` of them, every
    fourth a slideshow of still pictures (what ``clip.min_motion`` filters), the others moving scenes;
    three scenes of 3-9 s, 17-18 s in all (under VIDAL's 20 s cap, which the demo keeps), for a clip
    stage whose ``max_duration`` is shorter than the longest scene: split at cuts and at the stride."""
    out = []
    rng = np.random.default_rng(7)
    for k in range(count):
        lengths = list(LONG_SCENES[k % len(LONG_SCENES)])
        concepts = [CONCEPTS[int(i)] for i in rng.choice(len(CONCEPTS), size=len(lengths), replace=False)]
        still = k % 4 == 3
        out.append((f"{'slideshow' if still else 'compilation'}-{k}", concepts, lengths, still))
    return out


COPY_KINDS = ("reencoded", "resized", "trimmed")
COPIED_CONCEPTS = (3, 27, 51, 9, 33, 57)  # the first clips of these concepts are copied, in this order


def demo_copies(count: int) -> list[tuple[str, int]]:
    """(kind, concept index) of the demo's planted copies: MPEG-4 re-encodes, copies resized to 5/8 and
    copies trimmed to their first 80 %, in turn, of the first rendering of ``COPIED_CONCEPTS``."""
    return [(COPY_KINDS[k % 3], COPIED_CONCEPTS[k % len(COPIED_CONCEPTS)]) for k in range(count)]


def make_copy(
    path: str | Path,
    concept: Concept,
    kind: str,
    *,
    seconds: float,
    fps: int,
    size: tuple[int, int],
    seed: int,
) -> None:
    """A copy of ``make_clip``'s clip of the same arguments, as a re-upload would make it (``COPY_KINDS``)."""
    n = max(1, round(seconds * fps))
    frames = render_frames(concept, n_frames=n, size=size, seed=seed)
    sound = tone(concept, seconds, 44_100)
    if kind == "reencoded":
        encode_video(path, frames, fps, sound, codec="mpeg4")
    elif kind == "resized":
        w, h = (size[0] * 5 // 8) // 2 * 2, (size[1] * 5 // 8) // 2 * 2
        encode_video(
            path, np.stack([np.asarray(Image.fromarray(f).resize((w, h))) for f in frames]), fps, sound
        )
    else:
        keep = max(1, round(n * 0.8))
        encode_video(path, frames[:keep], fps, sound[: round(len(sound) * keep / n)])


def make_demo_media(
    out_dir: str | Path,
    *,
    per_concept: int = 1,
    seconds: float = 2.0,
    fps: int = 15,
    size: tuple[int, int] = (320, 240),
    as_urls: bool = False,
    long_videos: int = 0,
    copies: int = 0,
) -> Path:
    """Generate the demo clips once and a CSV list of them; returns the list's path.

    The list has ``path`` (or ``url`` as ``file://`` when ``as_urls``), ``title``, ``hashtags`` and
    ``description`` columns: the ``files`` input of the pipeline. Reuses clips made with the same
    parameters. ``long_videos`` adds that many longer videos with scene cuts (``long_demo_videos``)
    for the clip stage; ``copies`` that many copies of short clips (``demo_copies``), listed with their
    source's title, for the score stage's near-duplicate rule.
    """
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    params = {"per_concept": per_concept, "seconds": seconds, "fps": fps, "size": list(size), "v": 1}
    if long_videos:
        params["long_videos"] = long_videos
    if copies:
        params["copies"] = copies
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
    for slug, concepts, lengths, still in long_demo_videos(long_videos):
        video = out / f"{slug}.mp4"
        if not video.exists() or not stamp.exists() or json.loads(stamp.read_text()) != params:
            make_long_video(video, concepts, lengths, fps=fps, size=size, seed=500 + len(rows), still=still)
        kind = "slideshow" if still else "compilation"
        rows.append(
            {
                ("url" if as_urls else "path"): video.as_uri() if as_urls else str(video),
                "title": f"{kind}: " + ", then ".join(c.title for c in concepts),
                "hashtags": " ".join(f"#{t}" for t in [kind, *concepts[0].hashtags]),
                "description": f"Synthetic {kind} of {len(concepts)} scenes, {sum(lengths):g} s.",
            }
        )
    for kind, i in demo_copies(copies):
        concept = CONCEPTS[i]
        video = out / f"copy-{kind}-{concept.slug}.mp4"
        if not video.exists() or not stamp.exists() or json.loads(stamp.read_text()) != params:
            make_copy(video, concept, kind, seconds=seconds, fps=fps, size=size, seed=i)  # make_clip's k = 0
        rows.append(
            {
                ("url" if as_urls else "path"): video.as_uri() if as_urls else str(video),
                "title": concept.title,
                "hashtags": " ".join(f"#{t}" for t in concept.hashtags),
                "description": f"A {kind} copy of synthetic clip 0 of {concept.title}.",
            }
        )
    stamp.write_text(json.dumps(params))
    with open(list_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return list_path
