"""Probe-stage decode throughput vs decoding every frame (PyAV) and OpenCV's VideoCapture.

Two fixed sets of generated 10 s 720p 30 fps H.264 clips: a keyframe every 2 s (typical of
short-video platforms) and a single keyframe (the worst case for seeking). Single process, one
decoder thread: videos/s per core. Usage: python bench/bench_probe.py [--clips 4] [--repeat 3]
"""

from __future__ import annotations

import os

# one decoder thread for OpenCV too, or its FFmpeg backend decodes on every core
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "threads;1")

import argparse
import platform
import tempfile
import time
from pathlib import Path

import av
import cv2

from pipeline.synthetic import CONCEPTS, make_clip
from stages.media import probe_file
from stages.probe import encode_jpeg


def full_decode_pyav(path: str) -> int:
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_count = 1
        return sum(1 for _ in c.decode(s))


def full_decode_opencv(path: str) -> int:
    cap = cv2.VideoCapture(path)
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def probe(path: str) -> int:
    p = probe_file(path, num_frames=8, short_side=256, threads=1)
    for f in p.frames:  # the stage also JPEG-encodes the 8 frames
        encode_jpeg(f, 90)
    return p.decoded_frames


def timed(fn, paths: list[str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for p in paths:
            fn(p)
        best = min(best, time.perf_counter() - t)
    return len(paths) / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    tmp = Path(tempfile.mkdtemp(prefix="vidal-bench-probe-"))
    print(f"machine: {platform.processor() or platform.machine()}, PyAV {av.__version__}, OpenCV {cv2.__version__}")
    print("| set | probe (planned) v/s | PyAV full decode v/s | OpenCV full decode v/s | probe / PyAV | probe / OpenCV | frames decoded by probe |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, gop in (("keyframe every 2 s", 60), ("single keyframe", 10_000)):
        paths = []
        for i in range(args.clips):
            p = tmp / f"{gop}-{i}.mp4"
            make_clip(p, CONCEPTS[i], seconds=10.0, fps=30, size=(1280, 720), seed=i, gop=gop)
            paths.append(str(p))
        decoded = probe(paths[0])
        r_probe = timed(probe, paths, args.repeat)
        r_av = timed(full_decode_pyav, paths, args.repeat)
        r_cv = timed(full_decode_opencv, paths, args.repeat)
        print(f"| {name} | {r_probe:.2f} | {r_av:.2f} | {r_cv:.2f} | {r_probe / r_av:.2f}x | "
              f"{r_probe / r_cv:.2f}x | {decoded} / 300 |")


if __name__ == "__main__":
    main()
