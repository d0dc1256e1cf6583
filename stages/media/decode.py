"""Media decoding for the probe stage: stream facts, a planned sparse decode of N frames, 16 kHz audio.

The decode plan: demux the file once (cheap), one group of pictures (GOP) at a time. When a GOP is
complete, every target time whose frame lies in it is known; feed the decoder that GOP's packets in
decode order only up to the last target, with the codec context's ``skip_frame = NONREF`` for every
packet that is not a target (the H.264 decoder then drops the pictures nothing references,
``nal_ref_idc == 0``), then drain the decoder and reset it for the next GOP. GOPs without targets are
never decoded. A target frame is converted the moment it is decoded, by one single-threaded swscale
call straight to the target size in RGB (to planar RGB and then packed, where that is the same bytes
and faster: ``FrameConverter``), and every other frame is released at once. A naive ``seek`` per
target decodes shared GOP prefixes again and is slower than decoding everything. Audio is decoded
in the same pass and resampled in chunks (``stages.media.audio.AudioTrack``).

Measured on 10 s 720p clips (bench/bench_probe.py --profile): holding a GOP's decoded frames until the
GOP ended made the decoder allocate (and page-fault) a fresh buffer per picture, 80 ms per clip with a
single keyframe, as much as the decoding itself; swscale's default slice threads cost 3-4 ms per frame.

The plan and its execution are apart: ``plan_decode`` (which times, at which timestamps),
``frames_for_targets`` (which frame of a GOP stands for each target) and ``packets_to_feed`` (which of a
GOP's packets the decoder gets, and which of them it may drop) are pure functions of numbers, tested
without a file; ``decode`` executes a plan on an open container.
"""

from __future__ import annotations

import io
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from stages.media.audio import AudioTrack


class MediaError(Exception):
    """The file is not a usable video; the message says why in words."""


@dataclass
class Probed:
    duration: float
    fps: float
    width: int  # as displayed (after rotation)
    height: int
    vcodec: str
    acodec: str | None
    rotation: int
    frames: list[np.ndarray] = field(default_factory=list)  # RGB uint8, resized
    frame_times: list[float] = field(default_factory=list)
    audio: np.ndarray | None = None  # int16 mono at the requested rate
    decoded_frames: int = 0  # how many pictures the decoder produced (for the benchmark)


@dataclass(frozen=True)
class StreamFacts:
    """What the container says of its video stream before any decoding (``duration`` 0: unknown)."""

    time_base: float | None  # seconds per timestamp unit
    start: float  # seconds
    duration: float  # seconds
    fps: float
    width: int  # as coded (before rotation)
    height: int


@dataclass(frozen=True)
class DecodePlan:
    """What to decode: the ``targets`` (seconds) and, for a ``sparse`` plan, their timestamps in the
    stream's time base; a dense plan decodes every frame (and, with no targets, learns the duration
    from the frames)."""

    sparse: bool
    targets: tuple[float, ...]
    target_pts: tuple[int, ...] = ()


# -- the plan: pure functions of numbers -------------------------------------------------------------
def target_times(start: float, duration: float, n: int) -> list[float]:
    """Centres of n equal segments of the video: uniform coverage, never the very first/last frame."""
    return [start + (i + 0.5) * duration / n for i in range(n)]


def plan_decode(facts: StreamFacts, num_frames: int, sparse: bool = True) -> DecodePlan:
    """The plan for ``num_frames`` uniform frames: sparse when asked and the stream has a duration and
    a time base (timestamps to aim at), else dense."""
    known = facts.duration > 0
    targets = tuple(target_times(facts.start, facts.duration, num_frames)) if known else ()
    if not (sparse and known and facts.time_base):
        return DecodePlan(False, targets)
    return DecodePlan(True, targets, tuple(round(t / facts.time_base) for t in targets))


def frames_for_targets(
    gop_pts: Sequence[int], target_pts: Sequence[int], first: int, last_gop: bool = False
) -> dict[int, int]:
    """Target index -> pts of the frame kept for it (the first at or after the target), for the
    targets from index ``first`` on that fall inside a GOP whose frames have ``gop_pts`` (any order);
    the last GOP of the stream takes every target left (its last frame stands in past the end)."""
    pts = sorted(gop_pts)
    chosen: dict[int, int] = {}
    i = first
    while i < len(target_pts) and (target_pts[i] <= pts[-1] or last_gop):
        chosen[i] = pts[min(bisect_left(pts, target_pts[i]), len(pts) - 1)]
        i += 1
    return chosen


def packets_to_feed(gop_pts: Sequence[int], wanted: set[int], skip_nonref: bool) -> list[bool]:
    """For a GOP's packets in decode order, the prefix the decoder gets (up to the last wanted frame),
    each marked True where the decoder may drop the picture if nothing references it."""
    end = max(i for i, p in enumerate(gop_pts) if p in wanted)
    return [skip_nonref and p not in wanted for p in gop_pts[: end + 1]]


def nearest_frames(times: Sequence[float], targets: Sequence[float]) -> list[int]:
    """Index of the first frame at or after each target time (the last frame past the end)."""
    return [min(bisect_left(times, t), len(times) - 1) for t in targets]


# -- executing a plan --------------------------------------------------------------------------------
def _display_size(w: int, h: int, rotation: int) -> tuple[int, int]:
    return (h, w) if rotation % 180 else (w, h)


def _rotation(frame: av.VideoFrame) -> int:
    return int(getattr(frame, "rotation", 0) or 0)


# Decoders whose ``skip_frame = NONREF`` drops exactly the pictures no other picture references
# (H.264: ``nal_ref_idc == 0``). Others get every packet of a GOP prefix.
_SKIPS_NONREF = frozenset({"h264"})


# Source formats for which swscale's packed RGB output interpolates chroma at full horizontal
# resolution always (4:4:4), or only at an odd output width (it forces it then).
_FULL_CHROMA = frozenset({"yuv444p", "yuvj444p"})
_FULL_CHROMA_IF_ODD = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p"})


def planar_rgb_is_exact(pix_fmt: str, width: int, height: int, out_height: int) -> bool:
    """Whether swscale's planar RGB (``gbrp``) output, reordered, is byte-identical to its ``rgb24``.

    Planar RGB always interpolates chroma at full resolution and its vertical pass has one generic
    (SIMD) writer; packed RGB matches it when it interpolates chroma at full resolution too and its
    vertical filter is long enough for its generic writer (its one- and two-tap writers round
    differently): a reduction of the height by 1.25x or more (measured identical from 1.002x on).
    """
    if 4 * height < 5 * out_height:
        return False
    return pix_fmt in _FULL_CHROMA or (pix_fmt in _FULL_CHROMA_IF_ODD and width % 2 == 1)


class FrameConverter:
    """One swscale context for all kept frames of a file: full-size YUV to target-size RGB in one call.

    ``threads=1``: swscale's default (one slice thread per core) builds a thread pool per context and
    cost 3-4 ms per 720p frame on 2 cores inside probe, against 0.7-1.3 ms on one thread (same pixels).
    Where planar RGB gives the same bytes (``planar_rgb_is_exact``: 16:9 and 4:3 sources at short side
    256, for example) it is asked for instead: 0.75 against 1.37 ms per 720p frame to 455x256.
    """

    def __init__(self, short_side: int):
        self.short_side = short_side
        self.reformatter = VideoReformatter()
        self.packer = VideoReformatter()  # planar to packed RGB, unscaled: a copy, faster than numpy's

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        scale = self.short_side / min(width, height) if self.short_side else 1.0
        return max(2, round(width * scale)), max(2, round(height * scale))

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        tw, th = self.target_size(frame.width, frame.height)
        planar = planar_rgb_is_exact(frame.format.name, tw, frame.height, th)
        small = self.reformatter.reformat(
            frame, width=tw, height=th, format="gbrp" if planar else "rgb24", threads=1
        )
        if planar:
            small = self.packer.reformat(small, format="rgb24", threads=1)
        rgb = small.to_ndarray()
        rotation = _rotation(frame)
        # the display matrix rotates counter-clockwise by `rotation` degrees
        return np.ascontiguousarray(np.rot90(rgb, k=(rotation // 90) % 4)) if rotation % 360 else rgb


class _GopSampler:
    """Collects one GOP's packets and decodes the frames for the targets inside it.

    Target frames are converted as soon as they are decoded and every other decoded frame is dropped
    at once, so the decoder's buffer pool recycles a handful of buffers instead of allocating (and
    page-faulting) one per decoded picture of a long GOP.
    """

    def __init__(self, stream, target_pts: Sequence[int], convert: FrameConverter):
        self.cc = stream.codec_context
        self.skip_nonref = self.cc.name in _SKIPS_NONREF
        self.targets = target_pts  # target timestamps in stream time base, ascending
        self.convert = convert
        self.next_target = 0
        self.gop: list[av.Packet] = []
        self.kept: dict[int, np.ndarray] = {}  # target index -> converted frame
        self.kept_pts: dict[int, int] = {}  # target index -> pts of the frame kept for it
        self.rotation = 0
        self.decoded = 0

    def add(self, packet: av.Packet) -> None:
        if packet.is_keyframe and self.gop:
            self.finish_gop()
        self.gop.append(packet)

    def finish_gop(self, last: bool = False) -> None:
        gop, self.gop = self.gop, []
        if self.next_target >= len(self.targets) or not gop:
            return
        chosen = frames_for_targets([p.pts for p in gop], self.targets, self.next_target, last)
        if not chosen:
            return
        self.next_target = max(chosen) + 1
        wanted = set(chosen.values())
        skips = packets_to_feed([p.pts for p in gop], wanted, self.skip_nonref)
        converted, latest = self._decode(gop, skips, wanted)
        for ti, pts in chosen.items():
            if pts not in converted:
                if latest is None:
                    raise MediaError("no frame decoded around a target time (corrupt video data)")
                pts = latest.pts
                converted.setdefault(pts, self.convert(latest))
            self.kept[ti], self.kept_pts[ti] = converted[pts], pts

    def _decode(
        self, gop: list[av.Packet], skips: list[bool], wanted: set[int]
    ) -> tuple[dict[int, np.ndarray], av.VideoFrame | None]:
        """Feed the GOP prefix, converting wanted frames as they come; (pts -> frame, the latest frame:
        it stands in for a wanted frame the decoder never output)."""
        converted: dict[int, np.ndarray] = {}
        latest: av.VideoFrame | None = None

        def take(frames: list[av.VideoFrame]) -> None:
            nonlocal latest
            for f in frames:
                self.decoded += 1
                if f.pts in wanted and f.pts not in converted:
                    converted[f.pts] = self.convert(f)
                    self.rotation = _rotation(f)
                if latest is None or (f.pts or 0) > (latest.pts or 0):
                    latest = f

        skipping = False
        for p, skip in zip(gop, skips):
            # the decoder drops unreferenced pictures itself; a wanted one is decoded whatever it is
            if skip != skipping:
                self.cc.skip_frame = "NONREF" if skip else "DEFAULT"
                skipping = skip
            take(self.cc.decode(p))
        take(self.cc.decode(None))
        self.cc.skip_frame = "DEFAULT"
        self.cc.flush_buffers()
        return converted, latest


# Opening a file decodes its first pictures (``avformat_find_stream_info`` learns the pixel format
# and the reorder depth from them, then throws them away): for these the deblocking filter is
# skipped, which leaves what is learnt the same and the decoders probe uses untouched (they are
# made afterwards) and opens a 720p H.264 file in 0.8 ms less, 1080p in 2 ms less (of 4 / 11 ms).
_OPEN_OPTIONS = {"skip_loop_filter": "all"}


def open_media(source: str | io.IOBase) -> av.container.InputContainer:
    """Open a media file or stream with PyAV; ``MediaError`` in words when it cannot be read."""
    try:
        return av.open(source, metadata_errors="ignore", options=_OPEN_OPTIONS)
    except FileNotFoundError:
        raise MediaError(f"file not found: {source}") from None
    except av.error.InvalidDataError as e:
        raise MediaError(f"not a readable media file ({e.strerror or e})") from None
    except av.error.FFmpegError as e:
        raise MediaError(f"cannot open media: {e}") from None


def _pts_seconds(pts: int | None, tb: float | None) -> float:
    return float(pts * tb) if tb and pts is not None else 0.0


def stream_facts(container: av.container.InputContainer) -> StreamFacts:
    """The video stream's facts from the header; ``MediaError`` without a video stream or frame size."""
    if not container.streams.video:
        kind = "audio-only file" if container.streams.audio else "no streams"
        raise MediaError(f"no video stream ({kind})")
    vs = container.streams.video[0]
    tb = float(vs.time_base) if vs.time_base else None
    w, h = vs.codec_context.width, vs.codec_context.height
    if not w or not h:
        raise MediaError("video stream has no frame size (corrupt header)")
    return StreamFacts(
        time_base=tb,
        start=(vs.start_time or 0) * tb if tb else 0.0,
        duration=(vs.duration * tb) if (vs.duration and tb) else (container.duration or 0) / 1e6,
        fps=float(vs.average_rate or vs.guessed_rate or 0),
        width=w,
        height=h,
    )


def probe_file(
    source: str | io.IOBase,
    *,
    num_frames: int = 8,
    short_side: int = 256,
    audio_rate: int = 16_000,
    planned: bool = True,
    threads: int = 1,
) -> Probed:
    """Stream facts, ``num_frames`` RGB frames sampled uniformly, and mono audio at ``audio_rate``.

    ``planned=False`` decodes every frame (the fallback for streams without usable timestamps or
    keyframe flags). Raises ``MediaError`` with a reason in words for unusable files.
    """
    with open_media(source) as container:
        facts = stream_facts(container)
        container.streams.video[0].thread_count = threads
        plan = plan_decode(facts, num_frames, sparse=planned)
        return decode(
            container, facts, plan, num_frames=num_frames, short_side=short_side, audio_rate=audio_rate
        )


def decode(
    container: av.container.InputContainer,
    facts: StreamFacts,
    plan: DecodePlan,
    *,
    num_frames: int,
    short_side: int,
    audio_rate: int,
) -> Probed:
    """Execute ``plan`` on an open container: its frames converted to RGB at ``short_side``, and all
    of the first audio stream as mono int16 at ``audio_rate``."""
    vs = container.streams.video[0]
    a_s = container.streams.audio[0] if container.streams.audio else None
    convert = FrameConverter(short_side)
    sampler = _GopSampler(vs, plan.target_pts, convert) if plan.sparse else None
    all_frames, audio = _demux(container, vs, a_s, sampler, facts.time_base, audio_rate)
    duration = facts.duration
    if sampler is not None:
        n = len(plan.targets)
        if len(sampler.kept) < n:
            raise MediaError(f"truncated: only {len(sampler.kept)} of {n} sample points decoded")
        frames = [sampler.kept[i] for i in range(n)]
        frame_times = [round(_pts_seconds(sampler.kept_pts[i], facts.time_base), 4) for i in range(n)]
        rotation, decoded = sampler.rotation, sampler.decoded
    else:
        kept, duration = _pick_dense(all_frames, facts, plan, num_frames)
        frames = [convert(f) for f in kept]
        frame_times = [round(_pts_seconds(f.pts, facts.time_base), 4) for f in kept]
        rotation, decoded = _rotation(kept[0]), len(all_frames)
    dw, dh = _display_size(facts.width, facts.height, rotation)
    return Probed(
        duration=round(float(duration), 4),
        fps=round(facts.fps, 4),
        width=dw,
        height=dh,
        vcodec=vs.codec_context.name,
        acodec=a_s.codec_context.name if a_s else None,
        rotation=rotation,
        frames=frames,
        frame_times=frame_times,
        audio=audio,
        decoded_frames=decoded,
    )


def _demux(container, vs, a_s, sampler: _GopSampler | None, tb: float | None, audio_rate: int):
    """One pass over the packets: audio decoded and resampled, video fed to the sampler (sparse) or
    decoded whole (dense). Returns (the dense plan's (seconds, frame) list, the audio or None)."""
    all_frames: list[tuple[float, av.VideoFrame]] = []
    audio = AudioTrack(audio_rate) if a_s else None
    try:
        for packet in container.demux([vs, a_s] if a_s else [vs]):
            if not packet.size:
                continue
            if packet.stream is a_s:
                for af in a_s.codec_context.decode(packet):
                    audio.add(af)
            elif sampler is not None:
                if packet.pts is None:
                    raise MediaError("packets without timestamps")
                sampler.add(packet)
            else:
                all_frames += [(_pts_seconds(f.pts, tb), f) for f in vs.codec_context.decode(packet)]
        if sampler is not None:
            sampler.finish_gop(last=True)
        else:
            all_frames += [(_pts_seconds(f.pts, tb), f) for f in vs.codec_context.decode(None)]
        samples = audio.finish() if audio is not None else None
    except av.error.FFmpegError as e:
        raise MediaError(f"decode error: {e}") from None
    return all_frames, samples


def _pick_dense(
    all_frames: list[tuple[float, av.VideoFrame]], facts: StreamFacts, plan: DecodePlan, num_frames: int
) -> tuple[list[av.VideoFrame], float]:
    """The frames a dense plan keeps, and the duration (learnt from the frames when unknown)."""
    if not all_frames:
        raise MediaError("no video frames could be decoded")
    duration, targets = facts.duration, plan.targets
    if duration <= 0:  # learn the duration from the frames themselves
        t0, t1 = all_frames[0][0], all_frames[-1][0]
        duration = max(t1 - t0, 1e-3) + (1 / facts.fps if facts.fps else 0)
        targets = tuple(target_times(t0, duration, num_frames))
    times = [t for t, _ in all_frames]
    if targets[-1] > times[-1] + 2.0 / max(facts.fps, 1):
        raise MediaError(f"truncated: frames end at {times[-1]:.2f}s of {facts.start + duration:.2f}s")
    return [all_frames[i][1] for i in nearest_frames(times, targets)], duration
