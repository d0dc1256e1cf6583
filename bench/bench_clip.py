"""Scene-cut detection for the clip stage: vidal's PyAV detector against PySceneDetect, speed and accuracy.

Generated H.264 videos (30 fps) of scenes 0.5-3 s long with hard cuts at known frames, one scene of
fast motion and one fade through black per video; sets at 320x240 and 1280x720 (keyframe every 2 s).
Accuracy: precision and recall of the hard cuts within 2 frames, and whether the fade was found
(anywhere inside it). Speed: wall and CPU time (``time.process_time``) per video, medians over
repeats, every method run back to back on the same files in each repeat; load average beside it.

- ``vidal``: ``stages.clip.detect_cuts`` (every frame shrunk to a 36 px short side, HSV content score,
  adaptive threshold, fade through black).
- ``vidal clip row``: what the stage does per long video: the same pass plus 8 frames per clip at
  256 px, the audio, JPEG and FLAC (``ClipStage.clip_rows``), beside ``probe`` on the same file.
- ``psd content`` / ``psd adaptive``: PySceneDetect's ContentDetector / AdaptiveDetector with default
  settings and its automatic downscaling, OpenCV backend (its default); ``psd content pyav``: the
  PyAV backend. PySceneDetect is a bench-only install, not a dependency:
  ``pip install -c constraints.txt --no-deps scenedetect`` (its own requirement, the GUI
  ``opencv-python``, would shadow the project's ``opencv-python-headless``).

Usage::

    python bench/bench_clip.py --repeat 3
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "threads;1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.synthetic import CONCEPTS, Concept, encode_video, render_frames  # noqa: E402
from stages.base import RunContext  # noqa: E402
from stages.clip import ClipConfig, ClipStage, detect_cuts  # noqa: E402
from stages.probe import ProbeConfig, ProbeStage  # noqa: E402

FPS = 30
FADE = 12  # frames out, 4 black, frames in


def cut_video(path: Path, size: tuple[int, int], seed: int) -> tuple[list[int], tuple[int, int]]:
    """Write one test video; returns its hard-cut frames and the frame span of its fade."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(15, 90, size=10).tolist()
    parts, cuts, fade, at = [], [], (0, 0), 0
    for i, n in enumerate(lengths):
        concept = CONCEPTS[int(rng.integers(len(CONCEPTS)))]
        if i == 2:
            concept = Concept(concept.colour, concept.shape, "left")
        frames = render_frames(concept, n_frames=n if i != 2 else n // 4 + 1, size=size, seed=seed * 100 + i)
        frames = np.concatenate([frames] * 4)[:n] if i == 2 else frames  # crosses the frame 4 times
        frames = np.clip(frames.astype(np.int16) + rng.integers(-40, 90, size=3), 0, 255).astype(np.uint8)
        if i == 6:  # fade out the previous scene, black, fade this one in
            ramp = np.linspace(1, 0, FADE)[:, None, None, None]
            parts[-1][-FADE:] = (parts[-1][-FADE:] * ramp).astype(np.uint8)
            frames[:FADE] = (frames[:FADE] * ramp[::-1]).astype(np.uint8)
            parts.append(np.zeros((4, *frames.shape[1:]), np.uint8))
            fade = (at - FADE, at + 4 + FADE)
            at += 4
        elif i:
            cuts.append(at)
        parts.append(frames)
        at += n
    encode_video(path, np.concatenate(parts), FPS, gop=2 * FPS)
    return cuts, fade


def psd_cuts(path: str, detector: str, backend: str = "opencv") -> list[float]:
    from scenedetect import AdaptiveDetector, ContentDetector, SceneManager, open_video

    video = open_video(path, backend=backend)
    sm = SceneManager()
    sm.add_detector(ContentDetector() if detector == "content" else AdaptiveDetector())
    sm.detect_scenes(video)
    return [start.seconds for start, _ in sm.get_scene_list()[1:]]


def clip_row(path: str) -> None:
    row = ProbeStage(ProbeConfig(), RunContext(root="")).process_row({"video_id": "v", "media": path})
    stage = ClipStage(ClipConfig(max_duration=5, min_duration=0.5), RunContext(root=""))
    stage.clip_rows({"video_id": "v", "media": path, **row})


def probe_row(path: str) -> None:
    ProbeStage(ProbeConfig(), RunContext(root="")).process_row({"video_id": "v", "media": path})


DETECTORS: dict[str, Callable[[str], list[float]]] = {
    "vidal": lambda p: detect_cuts(p),
    "psd content": lambda p: psd_cuts(p, "content"),
    "psd adaptive": lambda p: psd_cuts(p, "adaptive"),
    "psd content pyav": lambda p: psd_cuts(p, "content", "pyav"),
}


def score(found: list[int], cuts: list[int], fade: tuple[int, int]) -> tuple[int, int, int, bool]:
    """(true hits, false detections, cuts made, fade found) with a 2-frame tolerance on hard cuts."""
    in_fade = [f for f in found if fade[0] <= f <= fade[1]]
    rest = [f for f in found if f not in in_fade]
    hits = sum(any(abs(f - c) <= 2 for f in rest) for c in cuts)
    false = sum(not any(abs(f - c) <= 2 for c in cuts) for f in rest) + max(0, len(in_fade) - 1)
    return hits, false, len(cuts), bool(in_fade)


def timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def run_set(name: str, size: tuple[int, int], videos: int, repeat: int, tmp: Path) -> None:
    files = []
    for v in range(videos):
        path = tmp / f"{name}-{v}.mp4"
        files.append((str(path), *cut_video(path, size, seed=v + 1)))
    load0 = os.getloadavg()
    acc = {k: [0, 0, 0, 0] for k in DETECTORS}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in [*DETECTORS, "vidal clip row", "probe"]}
    for r in range(repeat):
        for path, cuts, fade in files:
            for k, fn in DETECTORS.items():
                found, wall, cpu = timed(lambda fn=fn, path=path: fn(path))
                times[k].append((wall, cpu))
                if r == 0:
                    h, f, n, fd = score([round(t * FPS) for t in found], cuts, fade)
                    acc[k] = [acc[k][0] + h, acc[k][1] + f, acc[k][2] + n, acc[k][3] + fd]
            for k, fn in (("vidal clip row", clip_row), ("probe", probe_row)):
                times[k].append(timed(lambda fn=fn, path=path: fn(path))[1:])
    load1 = os.getloadavg()
    print(
        f"\n### {name}: {videos} videos of ~15 s at {size[0]}x{size[1]} {FPS} fps, {repeat} repeats, "
        f"load average {load0[0]:.1f} -> {load1[0]:.1f}"
    )
    print("| method | precision | recall | fades found | wall s/video | CPU s/video |")
    print("|---|---|---|---|---|---|")
    for k, series in times.items():
        wall, cpu = (statistics.median(x[i] for x in series) for i in (0, 1))
        if k in acc:
            h, f, n, fd = acc[k]
            print(f"| {k} | {h / max(h + f, 1):.3f} | {h / n:.3f} | {fd}/{videos} | {wall:.2f} | {cpu:.2f} |")
        else:
            print(f"| {k} | | | | {wall:.2f} | {cpu:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--sets", nargs="*", default=["240p", "720p"])
    args = ap.parse_args()
    sizes = {"240p": (320, 240), "720p": (1280, 720)}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets:
            run_set(name, sizes[name], args.videos, args.repeat, Path(tmp))


if __name__ == "__main__":
    main()
