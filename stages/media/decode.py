"""Media decoding for the probe stage: stream facts, a planned sparse decode of N frames, 16 kHz audio.

The decode plan: demux the file once (cheap), one group of pictures (GOP) at a time. When a GOP is
complete, every target time whose frame lies in it is known; feed the decoder that GOP's packets in
decode order only up to the last target, with the codec context's ``skip_frame = NONREF`` for every
packet that is not a target (the H.264 decoder then drops the pictures nothing references,
``nal_ref_idc == 0``), then drain the decoder and reset it for the next GOP. GOPs without targets are
never decoded. A target frame is converted the moment it is decoded, by one single-threaded swscale
call straight to the target size in RGB, and every other frame is released at once. A naive ``seek``
per target decodes shared GOP prefixes again and is slower than decoding everything.

Measured on 10 s 720p clips (bench/bench_probe.py --profile): holding a GOP's decoded frames until the
GOP ended made the decoder allocate (and page-fault) a fresh buffer per picture, 80 ms per clip with a
single keyframe, as much as the decoding itself; swscale's default slice threads cost 3-4 ms per frame.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import av
import numpy as np
from av.video.reformatter import VideoReformatter


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


def target_times(start: float, duration: float, n: int) -> list[float]:
    """Centres of n equal segments of the video: uniform coverage, never the very first/last frame."""
    return [start + (i + 0.5) * duration / n for i in range(n)]


def _display_size(w: int, h: int, rotation: int) -> tuple[int, int]:
    return (h, w) if rotation % 180 else (w, h)


# Decoders whose ``skip_frame = NONREF`` drops exactly the pictures no other picture references
# (H.264: ``nal_ref_idc == 0``). Others get every packet of a GOP prefix.
_SKIPS_NONREF = frozenset({"h264"})


class _FrameConverter:
    """One swscale context for all kept frames of a file: full-size YUV to target-size RGB in one call.

    ``threads=1``: swscale's default (one slice thread per core) builds a thread pool per context and
    cost 3-4 ms per 720p frame on 2 cores inside probe, against 0.7-1.3 ms on one thread (same pixels).
    """

    def __init__(self, short_side: int):
        self.short_side = short_side
        self.reformatter = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        w, h = frame.width, frame.height
        scale = self.short_side / min(w, h) if self.short_side else 1.0
        tw, th = max(2, round(w * scale)), max(2, round(h * scale))
        rgb = self.reformatter.reformat(frame, width=tw, height=th, format="rgb24", threads=1).to_ndarray()
        rotation = int(getattr(frame, "rotation", 0) or 0)
        # the display matrix rotates counter-clockwise by `rotation` degrees
        return np.ascontiguousarray(np.rot90(rgb, k=(rotation // 90) % 4)) if rotation % 360 else rgb


class _GopSampler:
    """Collects one GOP's packets and decodes the frames for the targets inside it.

    Target frames are converted as soon as they are decoded and every other decoded frame is dropped
    at once, so the decoder's buffer pool recycles a handful of buffers instead of allocating (and
    page-faulting) one per decoded picture of a long GOP.
    """

    def __init__(self, stream, targets_pts: list[int], convert: _FrameConverter):
        self.cc = stream.codec_context
        self.skip_nonref = self.cc.name in _SKIPS_NONREF
        self.targets = targets_pts  # target timestamps in stream time base, ascending
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

    def _choose(self, gop: list[av.Packet], last: bool) -> dict[int, int]:
        """Target index -> pts of its frame (the first at or after the target) for targets in this GOP."""
        pts_sorted = sorted(p.pts for p in gop)
        chosen: dict[int, int] = {}
        while self.next_target < len(self.targets) and (
            self.targets[self.next_target] <= pts_sorted[-1] or last
        ):
            idx = int(np.searchsorted(pts_sorted, self.targets[self.next_target]))
            chosen[self.next_target] = pts_sorted[min(idx, len(pts_sorted) - 1)]
            self.next_target += 1
        return chosen

    def finish_gop(self, last: bool = False) -> None:
        gop, self.gop = self.gop, []
        if self.next_target >= len(self.targets) or not gop:
            return
        chosen = self._choose(gop, last)
        if not chosen:
            return
        wanted = set(chosen.values())
        end = max(i for i, p in enumerate(gop) if p.pts in wanted)
        converted: dict[int, np.ndarray] = {}
        latest: av.VideoFrame | None = None  # stands in for a wanted frame the decoder never output

        def take(frames: list[av.VideoFrame]) -> None:
            nonlocal latest
            for f in frames:
                self.decoded += 1
                if f.pts in wanted and f.pts not in converted:
                    converted[f.pts] = self.convert(f)
                    self.rotation = int(getattr(f, "rotation", 0) or 0)
                if latest is None or (f.pts or 0) > (latest.pts or 0):
                    latest = f

        skipping = False
        for p in gop[: end + 1]:
            # the decoder drops unreferenced pictures itself; a wanted one is decoded whatever it is
            skip = self.skip_nonref and p.pts not in wanted
            if skip != skipping:
                self.cc.skip_frame = "NONREF" if skip else "DEFAULT"
                skipping = skip
            take(self.cc.decode(p))
        take(self.cc.decode(None))
        self.cc.skip_frame = "DEFAULT"
        self.cc.flush_buffers()
        for ti, pts in chosen.items():
            if pts not in converted:
                if latest is None:
                    raise MediaError("no frame decoded around a target time (corrupt video data)")
                pts = latest.pts
                converted.setdefault(pts, self.convert(latest))
            self.kept[ti], self.kept_pts[ti] = converted[pts], pts


def _open(source: str | io.IOBase) -> av.container.InputContainer:
    try:
        return av.open(source, metadata_errors="ignore")
    except FileNotFoundError:
        raise MediaError(f"file not found: {source}") from None
    except av.error.InvalidDataError as e:
        raise MediaError(f"not a readable media file ({e.strerror or e})") from None
    except av.error.FFmpegError as e:
        raise MediaError(f"cannot open media: {e}") from None


def _pts_seconds(pts: int | None, tb: float | None) -> float:
    return float(pts * tb) if tb and pts is not None else 0.0


def probe_file(
    source: str | io.IOBase,
    *,
    num_frames: int = 8,
    short_side: int = 256,
    audio_rate: int = 16_000,
    plan: bool = True,
    threads: int = 1,
) -> Probed:
    """Stream facts, ``num_frames`` RGB frames sampled uniformly, and mono audio at ``audio_rate``.

    ``plan=False`` decodes every frame (the fallback for streams without usable timestamps or
    keyframe flags). Raises ``MediaError`` with a reason in words for unusable files.
    """
    with _open(source) as container:
        if not container.streams.video:
            kind = "audio-only file" if container.streams.audio else "no streams"
            raise MediaError(f"no video stream ({kind})")
        vs = container.streams.video[0]
        vs.thread_count = threads
        a_s = container.streams.audio[0] if container.streams.audio else None
        tb = float(vs.time_base) if vs.time_base else None
        start = (vs.start_time or 0) * tb if tb else 0.0
        duration = (vs.duration * tb) if (vs.duration and tb) else (container.duration or 0) / 1e6
        fps = float(vs.average_rate or vs.guessed_rate or 0)
        w, h = vs.codec_context.width, vs.codec_context.height
        if not w or not h:
            raise MediaError("video stream has no frame size (corrupt header)")
        if duration <= 0 or tb is None:
            plan = False
        targets = target_times(start, duration, num_frames) if duration > 0 else []
        convert = _FrameConverter(short_side)
        sampler = _GopSampler(vs, [round(t / tb) for t in targets], convert) if plan else None
        all_frames: list[tuple[float, av.VideoFrame]] = []
        audio_chunks: list[np.ndarray] = []
        # one-second output frames: the same samples as one frame per input frame, 30x fewer arrays
        resampler = (
            av.AudioResampler(format="s16", layout="mono", rate=audio_rate, frame_size=audio_rate)
            if a_s
            else None
        )
        try:
            for packet in container.demux([vs, a_s] if a_s else [vs]):
                if not packet.size:
                    continue
                if packet.stream is a_s:
                    for af in a_s.codec_context.decode(packet):
                        audio_chunks += [r.to_ndarray().reshape(-1) for r in resampler.resample(af)]
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
        except av.error.FFmpegError as e:
            raise MediaError(f"decode error: {e}") from None
        if resampler is not None and audio_chunks:
            audio_chunks += [r.to_ndarray().reshape(-1) for r in resampler.resample(None)]

        if sampler is not None:
            if len(sampler.kept) < len(targets):
                raise MediaError(
                    f"truncated: only {len(sampler.kept)} of {len(targets)} sample points decoded"
                )
            frames = [sampler.kept[i] for i in range(len(targets))]
            frame_times = [round(_pts_seconds(sampler.kept_pts[i], tb), 4) for i in range(len(targets))]
            rotation, decoded = sampler.rotation, sampler.decoded
        else:
            if not all_frames:
                raise MediaError("no video frames could be decoded")
            if duration <= 0:  # learn the duration from the frames themselves
                t0, t1 = all_frames[0][0], all_frames[-1][0]
                duration = max(t1 - t0, 1e-3) + (1 / fps if fps else 0)
                targets = target_times(t0, duration, num_frames)
            times = np.array([t for t, _ in all_frames])
            if targets[-1] > times[-1] + 2.0 / max(fps, 1):
                raise MediaError(f"truncated: frames end at {times[-1]:.2f}s of {start + duration:.2f}s")
            kept = [all_frames[min(int(np.searchsorted(times, t)), len(times) - 1)][1] for t in targets]
            frames = [convert(f) for f in kept]
            frame_times = [round(_pts_seconds(f.pts, tb), 4) for f in kept]
            rotation, decoded = int(getattr(kept[0], "rotation", 0) or 0), len(all_frames)
        dw, dh = _display_size(w, h, rotation)
        return Probed(
            duration=round(float(duration), 4),
            fps=round(fps, 4),
            width=dw,
            height=dh,
            vcodec=vs.codec_context.name,
            acodec=a_s.codec_context.name if a_s else None,
            rotation=rotation,
            frames=frames,
            frame_times=frame_times,
            audio=np.concatenate(audio_chunks).astype(np.int16) if audio_chunks else None,
            decoded_frames=decoded,
        )
