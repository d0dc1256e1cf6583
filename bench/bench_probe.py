"""Probe-stage throughput against decoding every frame, and against the decode limit.

Sets of generated 10 s 30 fps H.264 clips (with AAC audio): 1280x720 with a keyframe every 2 s
(typical of short-video platforms) and with a single keyframe (the worst case for seeking), then
1920x1080 and vertical 1080x1920 with a keyframe every 2 s. Single process.

Figures that survive a shared machine: every repeat runs all methods back to back on the same clips
(interleaved), each timed by wall clock and by CPU time of the process (``time.process_time``: what a
core spends, less sensitive to other jobs than wall time); reported are medians over repeats and
the median of the per-repeat ratios, with the load average at the start and end of each set.

- ``probe``: what the stage does per video: ``probe_file`` + JPEG of the 8 frames + FLAC of the audio.
- ``PyAV full``: decode every video frame (one thread), nothing else.
- ``limit``: decode exactly the frames probe needs (the targets and the reference pictures before
  them in their GOPs), fed by this script from a plan made untimed beforehand; no audio, no
  conversion. ``probe / limit`` near 1 means probe is bound by decoding.
- ``OpenCV full``: ``cv2.VideoCapture`` reading every frame (one FFmpeg thread).

Usage::

    python bench/bench_probe.py --repeat 5                       # all sets, decoder threads 1 and 2
    python bench/bench_probe.py --sets 720p-gop2s 720p-single --profile   # where the time goes
    python bench/bench_probe.py --sets 720p-gop2s 720p-single --parts     # each fixed piece alone, no profiler
    git show c967d95:stages/media/decode.py > /tmp/media_before.py
    python bench/bench_probe.py --compare-with /tmp/media_before.py  # an older media.py, interleaved
"""

from __future__ import annotations

import os

# one decoder thread for OpenCV too, or its FFmpeg backend decodes on every core; numpy's BLAS
# threads otherwise spin on the second core and count as the probe's CPU time
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "threads;1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import cProfile
import importlib.util
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import av
import cv2
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import stages.probe  # noqa: E402
from contracts.encodings import encode_flac, encode_jpeg  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.synthetic import CONCEPTS, make_clip  # noqa: E402
from stages.base import RunContext  # noqa: E402
from stages.media import decode as media  # noqa: E402
from stages.media.audio import AudioTrack  # noqa: E402
from stages.media.decode import target_times  # noqa: E402
from stages.probe import ProbeStage  # noqa: E402

SETS = {  # name: (width, height, keyframe interval in frames)
    "720p-gop2s": (1280, 720, 60),
    "720p-single": (1280, 720, 10_000),
    "1080p-gop2s": (1920, 1080, 60),
    "1080x1920-gop2s": (1080, 1920, 60),
}


def make_set(name: str, clips: int, clip_dir: Path) -> list[str]:
    w, h, gop = SETS[name]
    clip_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(clips):
        p = clip_dir / f"{w}x{h}-gop{gop}-{i}.mp4"
        if not p.exists():  # generated clips are deterministic: reuse them across runs
            tmp = p.with_suffix(".part.mp4")
            make_clip(tmp, CONCEPTS[i], seconds=10.0, fps=30, size=(w, h), seed=i, gop=gop)
            tmp.rename(p)
        paths.append(str(p))
    return paths


def probe_with(probe_file: Callable, threads: int) -> Callable[[str], int]:
    def probe(path: str) -> int:
        p = probe_file(path, num_frames=8, short_side=256, threads=threads)
        for f in p.frames:
            encode_jpeg(f, 90)
        if p.audio is not None:
            encode_flac(p.audio, 16_000)
        return p.decoded_frames

    return probe


def full_decode_pyav(threads: int) -> Callable[[str], int]:
    def decode(path: str) -> int:
        with av.open(path) as c:
            s = c.streams.video[0]
            s.thread_count = threads
            return sum(1 for _ in c.decode(s))

    return decode


def full_decode_opencv(path: str) -> int:
    cap = cv2.VideoCapture(path)
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def _is_reference_h264(data: bytes, length_size: int) -> bool:
    """False when every slice NAL of an AVCC packet has nal_ref_idc == 0."""
    i, slices = 0, []
    while i + length_size < len(data):
        n = int.from_bytes(data[i : i + length_size], "big")
        slices += [data[i + length_size]] if data[i + length_size] & 0x1F in (1, 5) else []
        i += length_size + n
    return not slices or any(h & 0x60 for h in slices)


def needed_packets(path: str, num_frames: int = 8) -> list[list[int]]:
    """Per GOP with targets, the packet indices a minimal decode feeds: targets and the references before them.

    Made from a full decode (which frame is each target's) and the H.264 NAL headers (which pictures
    are references), independently of ``stages.media.decode``.
    """
    with av.open(path) as c:
        s = c.streams.video[0]
        extra = s.codec_context.extradata
        length_size = (extra[4] & 3) + 1
        tb = float(s.time_base)
        packets = [p for p in c.demux(s) if p.size]
        duration = s.duration * tb
        start = (s.start_time or 0) * tb
    frame_pts = sorted(p.pts for p in packets)
    targets = {
        frame_pts[min(_first_at_or_after(frame_pts, round(t / tb)), len(frame_pts) - 1)]
        for t in target_times(start, duration, num_frames)
    }
    gops: list[list[int]] = []
    for i, p in enumerate(packets):
        if p.is_keyframe or not gops:
            gops.append([])
        gops[-1].append(i)
    plan = []
    for gop in gops:
        in_gop = [i for i in gop if packets[i].pts in targets]
        if in_gop:
            end = max(in_gop)
            plan.append(
                [
                    i
                    for i in gop
                    if i <= end
                    and (packets[i].pts in targets or _is_reference_h264(bytes(packets[i]), length_size))
                ]
            )
    return plan


def _first_at_or_after(sorted_pts: list[int], t: int) -> int:
    return next((k for k, v in enumerate(sorted_pts) if v >= t), len(sorted_pts))


def decode_limit(plans: dict[str, list[list[int]]]) -> Callable[[str], int]:
    def decode(path: str) -> int:
        wanted = {i for gop in plans[path] for i in gop}
        ends = {gop[-1] for gop in plans[path]}
        n = 0
        with av.open(path) as c:
            s = c.streams.video[0]
            s.thread_count = 1
            cc = s.codec_context
            for i, p in enumerate(q for q in c.demux(s) if q.size):
                if i in wanted:
                    n += len(cc.decode(p))
                    if i in ends:
                        n += len(cc.decode(None))
                        cc.flush_buffers()
        return n

    return decode


def demux_only(path: str) -> int:
    with av.open(path) as c:
        return sum(1 for p in c.demux(c.streams.video[0]) if p.size)


_VIDEO_DECODERS = {"finish_gop", "take"}  # where the GOP sampler calls the decoder (before and after)
NEEDED, BEYOND = (
    "  of which the needed frames (limit)",
    "  beyond the limit (skipped pictures, frame buffers)",
)
PARTS = [
    "container open",
    "video decode",
    NEEDED,
    BEYOND,
    "colour conversion and resize",
    "JPEG encoding",
    "audio decode",
    "audio resample",
    "FLAC encoding",
    "Arrow assembly (rows to table)",
    "demux, Python bookkeeping, stage glue",
    "total",
]


def profile_probe(paths: list[str], probe_file: Callable, repeat: int) -> dict[str, float]:
    """CPU ms per video by part of one probe-stage call (``ProbeStage.process`` on one row), from cProfile.

    The decode of the needed frames is timed separately (the limit minus demuxing, interleaved) and
    subtracted from the probe's video decode: what remains was decoded or fed but not needed.
    """
    plans = {p: needed_packets(p) for p in paths}
    stage = ProbeStage(load_config(None, []).probe, RunContext(root="/tmp/unused"))
    batches = [pa.table({"video_id": [f"v{i}"], "media": [p]}) for i, p in enumerate(paths)]
    saved, stages.probe.probe_file = stages.probe.probe_file, probe_file
    try:
        for b in batches:
            stage.process(b)
        prof = cProfile.Profile(timer=time.process_time)
        prof.enable()
        for _ in range(repeat):
            for b in batches:
                stage.process(b)
        prof.disable()
    finally:
        stages.probe.probe_file = saved
    stats = pstats.Stats(prof).stats  # {(file, line, name): (calls, ncalls, tottime, cumtime, callers)}
    n = repeat * len(paths)

    def tottime(fragment: str, callers: Callable[[str], bool] = lambda _: True) -> float:
        return sum(
            tt
            for (_, _, name), (_, _, _, _, by) in stats.items()
            if fragment in name
            for (_, _, caller), (_, _, tt, _) in by.items()
            if callers(caller)
        )

    def cumtime(func: str) -> float:
        return sum(ct for (_, _, name), (_, _, _, ct, _) in stats.items() if name == func)

    t = interleaved({"limit": decode_limit(plans), "demux": demux_only}, paths, repeat)
    needed = (statistics.median(t["limit"]["cpu"]) - statistics.median(t["demux"]["cpu"])) / len(paths)
    video = tottime("'decode' of 'av.codec.context.CodecContext'", lambda c: c in _VIDEO_DECODERS) / n
    parts = {
        "container open": tottime("av.container.core.open", lambda c: c != "encode_flac") / n,
        "video decode": video,
        NEEDED: needed,
        BEYOND: video - needed,
        "colour conversion and resize": (
            tottime("reformat") + tottime("'to_ndarray' of 'av.video.frame") + cumtime("rot90")
        )
        / n,
        "JPEG encoding": cumtime("encode_jpeg") / n,
        "audio decode": (
            tottime("'decode' of 'av.codec.context.CodecContext'", lambda c: c not in _VIDEO_DECODERS)
            + tottime("'decode' of 'av.packet.Packet'")
        )
        / n,
        "audio resample": (
            tottime("'resample' of 'av.audio.resampler")
            + cumtime("<method 'to_ndarray' of 'av.audio.frame.AudioFrame' objects>")
        )
        / n,
        "FLAC encoding": cumtime("encode_flac") / n,
        # rows_to_table drains the process_rows generator: its own share is the difference
        "Arrow assembly (rows to table)": (
            cumtime("rows_to_table")
            - cumtime("process_rows")
            + cumtime("<method 'to_pylist' of 'pyarrow.lib.Table' objects>")
        )
        / n,
        "total": cumtime("process") / n,
    }
    counted = sum(v for k, v in parts.items() if k not in ("total", NEEDED, BEYOND))
    parts["demux, Python bookkeeping, stage glue"] = parts["total"] - counted
    return {k: parts[k] * 1000 for k in PARTS}


def part_timers(paths: list[str]) -> dict[str, Callable[[str], int]]:
    """One callable per piece of probe's fixed work, each timed alone (CPU), to subtract pairwise.

    The frames and audio the conversions and encoders take are made once beforehand (untimed), so
    these are the pieces' own costs on the same inputs probe gives them.
    """
    frames, audio = {}, {}
    for path in paths:
        p = media.probe_file(path, num_frames=8, short_side=256, threads=1)
        audio[path] = p.audio
        with av.open(path) as c:
            tb = float(c.streams.video[0].time_base)
            decoded = list(c.decode(video=0))
        # the frames probe kept: the decoded frame nearest each of its (rounded) frame times
        frames[path] = [min(decoded, key=lambda f, t=t: abs(f.pts * tb - t)) for t in p.frame_times]
    convert = media.FrameConverter(256)

    def opened(path: str) -> int:
        with av.open(path, metadata_errors="ignore"):
            return 0

    def demuxed(path: str) -> int:
        with av.open(path, metadata_errors="ignore") as c:
            return sum(1 for _ in c.demux())

    def audio_decoded(path: str, resample: bool = False) -> int:
        with av.open(path, metadata_errors="ignore") as c:
            a = c.streams.audio[0]
            track, n = AudioTrack(16_000), 0
            for packet in c.demux():  # every packet, as probe demuxes; only audio decoded
                for f in a.codec_context.decode(packet) if packet.stream is a else ():
                    n += track.add(f) or f.samples if resample else f.samples
            return len(track.finish()) if resample else n

    return {
        "container open": opened,
        "demux every packet": demuxed,
        "audio decode": audio_decoded,
        "audio resample": lambda path: audio_decoded(path, resample=True),
        "8 frame conversions": lambda path: sum(convert(f).size for f in frames[path]),
        "8 JPEGs": lambda path: sum(len(encode_jpeg(convert(f), 90)) for f in frames[path]),
        "FLAC": lambda path: len(encode_flac(audio[path], 16_000)),
    }


def parts_table(name: str, paths: list[str], repeat: int, plans: dict) -> list[list[str]]:
    """CPU ms per video of probe's pieces, each alone, interleaved with probe, the limit and full decoding."""
    methods = part_timers(paths)
    methods |= {
        "probe": probe_with(media.probe_file, 1),
        "probe_file": lambda path: media.probe_file(path, threads=1).decoded_frames,
        "limit": decode_limit(plans),
        "full": full_decode_pyav(1),
    }
    t = interleaved(methods, paths, repeat)
    ms = {k: statistics.median(v["cpu"]) / len(paths) * 1000 for k, v in t.items()}
    # pieces that are measured on top of another one: their own share is the difference
    own = {
        "container open": ms["container open"],
        "demux every packet": ms["demux every packet"] - ms["container open"],
        "audio decode": ms["audio decode"] - ms["demux every packet"],
        "audio resample": ms["audio resample"] - ms["audio decode"],
        "8 frame conversions": ms["8 frame conversions"],
        "8 JPEGs": ms["8 JPEGs"] - ms["8 frame conversions"],
        "FLAC": ms["FLAC"],
    }
    allowance = ms["full"] / 1.8 - ms["limit"]
    rows = [[name, part, f"{v:.2f}"] for part, v in own.items()]
    rows += [
        [
            name,
            "sum of the pieces beyond decoding (open and video demux are in the limit too)",
            f"{sum(own.values()) - own['container open'] - own['demux every packet']:.2f}",
        ],
        [
            name,
            "probe (stage work) / probe_file / limit / full decoding",
            f"{ms['probe']:.1f} / {ms['probe_file']:.1f} / {ms['limit']:.1f} / {ms['full']:.1f}",
        ],
        [name, "probe - limit", f"{ms['probe'] - ms['limit']:.2f}"],
        [name, "allowance over the limit at 1.8x full decoding (full / 1.8 - limit)", f"{allowance:.2f}"],
    ]
    return rows


def profile_table(columns: dict[str, dict[str, float]]) -> str:
    """Parts as rows, one column of CPU ms per video (and share of the total) per profiled code."""
    lines = [
        "| part | " + " | ".join(f"{c} (ms per video, share)" for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for part in PARTS:
        cells = [f"{v[part]:.1f} ({v[part] / v['total']:.0%})" for v in columns.values()]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def interleaved(methods: dict[str, Callable[[str], int]], paths: list[str], repeat: int) -> dict[str, dict]:
    """Each repeat runs every method over all paths; per method: wall and CPU seconds per repeat."""
    for fn in methods.values():  # warm-up: file cache, imports, codec tables
        fn(paths[0])
    out = {k: {"wall": [], "cpu": []} for k in methods}
    for _ in range(repeat):
        for name, fn in methods.items():
            w, c = time.perf_counter(), time.process_time()
            for p in paths:
                fn(p)
            out[name]["wall"].append(time.perf_counter() - w)
            out[name]["cpu"].append(time.process_time() - c)
    return out


def rate(t: dict, key: str, n: int) -> float:
    """Videos per second from the median of the repeats."""
    return n / statistics.median(t[key])


def ratio(a: dict, b: dict, key: str) -> float:
    """Median over repeats of (b's time / a's time): how many times faster a is than b, pairwise."""
    return statistics.median(tb / ta for ta, tb in zip(a[key], b[key]))


def load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    ap.add_argument("--clips", type=int, default=4, help="clips per set")
    ap.add_argument("--repeat", type=int, default=5, help="repeats; medians are reported")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="decoder threads to measure")
    ap.add_argument("--clip-dir", type=Path, default=Path("/tmp/vidal-bench-probe"))
    ap.add_argument("--profile", action="store_true", help="also print where one probe call spends its time")
    ap.add_argument(
        "--compare-with",
        type=Path,
        metavar="MEDIA_PY",
        help="an older stages/media/decode.py to time beside the current one (interleaved)",
    )
    ap.add_argument(
        "--parts",
        action="store_true",
        help="also time each piece of probe's fixed work alone (CPU, no profiler)",
    )
    ap.add_argument("--no-opencv", action="store_true")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    older = None
    if args.compare_with:
        spec = importlib.util.spec_from_file_location("media_before", args.compare_with)
        older = sys.modules["media_before"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(older)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"PyAV {av.__version__}, OpenCV {cv2.__version__}; {args.clips} clips per set, median of {args.repeat}"
    )
    rows_main, rows_threads, profiles, rows_parts = [], [], [], []
    for name in args.sets:
        paths = make_set(name, args.clips, args.clip_dir)
        before = load()
        plans = {p: needed_packets(p) for p in paths}
        needed = sum(len(g) for g in plans[paths[0]])
        methods: dict[str, Callable[[str], int]] = {}
        for th in args.threads:
            methods[f"probe t{th}"] = probe_with(media.probe_file, th)
            methods[f"full t{th}"] = full_decode_pyav(th)
        methods["limit"] = decode_limit(plans)
        if older is not None:
            methods["probe before"] = probe_with(older.probe_file, 1)
        if not args.no_opencv:
            methods["opencv"] = full_decode_opencv
        decoded = probe_with(media.probe_file, 1)(paths[0])
        t = interleaved(methods, paths, args.repeat)
        n, after = len(paths), load()
        if 1 in args.threads:
            p1, f1 = t["probe t1"], t["full t1"]
            row = [
                name,
                f"{rate(p1, 'wall', n):.2f}",
                f"{rate(f1, 'wall', n):.2f}",
                f"{rate(t['limit'], 'wall', n):.2f}",
                f"{ratio(p1, f1, 'wall'):.2f}x",
                f"{ratio(p1, f1, 'cpu'):.2f}x",
                f"{1 / ratio(p1, t['limit'], 'cpu'):.2f}x",
            ]
            row += [f"{ratio(t['probe before'], f1, 'cpu'):.2f}x"] if older is not None else []
            row += [f"{ratio(p1, t['opencv'], 'wall'):.2f}x"] if not args.no_opencv else []
            rows_main.append(row + [f"{decoded} ({needed} needed) / 300", f"{before} → {after}"])
        for th in args.threads:
            p, f = t[f"probe t{th}"], t[f"full t{th}"]
            rows_threads.append(
                [
                    name,
                    str(th),
                    f"{rate(p, 'wall', n):.2f}",
                    f"{rate(p, 'cpu', n):.2f}",
                    f"{rate(f, 'cpu', n):.2f}",
                    f"{ratio(p, f, 'cpu'):.2f}x",
                    f"{before} → {after}",
                ]
            )
        if args.parts:
            rows_parts += parts_table(name, paths, args.repeat, plans) + [
                [name, "load average start → end", f"{after} → {load()}"]
            ]
        if args.profile and name.startswith("720p"):
            cols = {"now": profile_probe(paths, media.probe_file, args.repeat)}
            if older is not None:
                cols["before"] = profile_probe(paths, older.probe_file, args.repeat)
            profiles.append((name, cols, load()))
    head = [
        "set",
        "probe v/s",
        "PyAV full v/s",
        "limit v/s",
        "probe / PyAV (wall)",
        "probe / PyAV (CPU)",
        "probe time / limit time (CPU)",
    ]
    head += ["before / PyAV (CPU)"] if older is not None else []
    head += ["probe / OpenCV (wall)"] if not args.no_opencv else []
    head += ["frames decoded by probe", "load average (1, 5, 15 min) start → end"]
    if rows_main:
        print(
            "\nDecoder threads 1. A / B: how many times faster A is, median of per-repeat ratios; "
            "probe time / limit time 1.00x means decode-bound\n"
        )
        _table(head, rows_main)
    print("\nVideos per second and per core (videos per CPU-second of the process), by decoder threads\n")
    _table(
        [
            "set",
            "decoder threads",
            "probe v/s (wall)",
            "probe v/s per core",
            "PyAV full v/s per core",
            "probe / PyAV (CPU)",
            "load average start → end",
        ],
        rows_threads,
    )
    if rows_parts:
        print("\nprobe's pieces, each timed alone: CPU ms per video, medians over repeats, interleaved\n")
        _table(["set", "piece", "CPU ms per video"], rows_parts)
    for name, prof, ld in profiles:
        print(
            f"\nWhere one probe call spends its time: {name}, cProfile (CPU time) over {args.repeat} calls "
            f"per clip, load average {ld}\n"
        )
        print(profile_table(prof))


def _table(head: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
