"""Media decoding for the probe stage: stream facts, a planned sparse decode of N frames, 16 kHz audio.

The decode plan: demux the file once (cheap), one group of pictures (GOP) at a time. When a GOP is
complete, every target time whose frame lies in it is known; feed the decoder that GOP's packets in
decode order only up to the last target, skipping pictures that no other picture references (H.264
``nal_ref_idc == 0``) unless they are targets, then drain the decoder and reset it for the next GOP.
GOPs without targets are never decoded, and only the kept frames are converted to RGB. A naive
``seek`` per target decodes shared GOP prefixes again and is slower than decoding everything.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field

import av
import numpy as np


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


def _nal_units_avcc(data: bytes, length_size: int) -> Iterator[int]:
    i = 0
    while i + length_size < len(data):
        n = int.from_bytes(data[i : i + length_size], "big")
        if i + length_size < len(data):
            yield data[i + length_size]
        i += length_size + n


def _nal_units_annexb(data: bytes) -> Iterator[int]:
    i = data.find(b"\x00\x00\x01")
    while i != -1 and i + 3 < len(data):
        yield data[i + 3]
        i = data.find(b"\x00\x00\x01", i + 3)


def is_reference_h264(data: bytes, avcc_length_size: int | None) -> bool:
    """False only when every slice NAL of the packet has nal_ref_idc == 0 (nothing refers to it)."""
    headers = _nal_units_avcc(data, avcc_length_size) if avcc_length_size else _nal_units_annexb(data)
    slices = [h for h in headers if h & 0x1F in (1, 5)]
    return not slices or any(h & 0x60 for h in slices)


def _avcc_length_size(stream: av.video.stream.VideoStream) -> int | None:
    extra = stream.codec_context.extradata
    return (extra[4] & 3) + 1 if extra and len(extra) > 4 and extra[0] == 1 else None


def _display_size(w: int, h: int, rotation: int) -> tuple[int, int]:
    return (h, w) if rotation % 180 else (w, h)


def _resize_to_short_side(frame: av.VideoFrame, short_side: int, rotation: int) -> np.ndarray:
    w, h = frame.width, frame.height
    scale = short_side / min(w, h) if short_side else 1.0
    tw, th = max(2, round(w * scale)), max(2, round(h * scale))
    rgb = frame.reformat(width=tw, height=th, format="rgb24").to_ndarray()
    # the display matrix rotates counter-clockwise by `rotation` degrees
    return np.ascontiguousarray(np.rot90(rgb, k=(rotation // 90) % 4)) if rotation % 360 else rgb


class _GopSampler:
    """Collects one GOP's packets and decodes the frames for the targets inside it."""

    def __init__(self, stream, targets_pts: list[int], avcc: int | None, skip_nonref: bool):
        self.stream, self.cc = stream, stream.codec_context
        self.targets = targets_pts  # target timestamps in stream time base, ascending
        self.avcc, self.skip_nonref = avcc, skip_nonref
        self.next_target = 0
        self.gop: list[av.Packet] = []
        self.kept: dict[int, av.VideoFrame] = {}  # target index -> frame
        self.decoded = 0
        self.last_frame: av.VideoFrame | None = None
        self.max_pts_seen: int | None = None

    def add(self, packet: av.Packet) -> None:
        if packet.is_keyframe and self.gop:
            self.finish_gop()
        self.gop.append(packet)

    def finish_gop(self, last: bool = False) -> None:
        gop, self.gop = self.gop, []
        if self.next_target >= len(self.targets) or not gop:
            return
        pts_sorted = sorted(p.pts for p in gop)
        max_pts = pts_sorted[-1]
        # targets whose chosen frame (first pts >= target) is in this GOP
        chosen: dict[int, int] = {}
        while self.next_target < len(self.targets) and (self.targets[self.next_target] <= max_pts or last):
            t = self.targets[self.next_target]
            idx = np.searchsorted(pts_sorted, t)
            chosen[self.next_target] = pts_sorted[min(idx, len(pts_sorted) - 1)]
            self.next_target += 1
        if not chosen:
            return
        wanted = set(chosen.values())
        end = max(i for i, p in enumerate(gop) if p.pts in wanted)
        frames: dict[int, av.VideoFrame] = {}
        for p in gop[: end + 1]:
            if self.skip_nonref and p.pts not in wanted and not is_reference_h264(bytes(p), self.avcc):
                continue
            for f in self.cc.decode(p):
                frames[f.pts] = f
        for f in self.cc.decode(None):
            frames[f.pts] = f
        self.cc.flush_buffers()
        self.decoded += len(frames)
        for ti, pts in chosen.items():
            f = frames.get(pts) or (frames[max(frames)] if frames else None)
            if f is None:
                raise MediaError("no frame decoded around a target time (corrupt video data)")
            self.kept[ti] = f


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
    try:
        container = av.open(source, metadata_errors="ignore")
    except FileNotFoundError:
        raise MediaError(f"file not found: {source}") from None
    except av.error.InvalidDataError as e:
        raise MediaError(f"not a readable media file ({e.strerror or e})") from None
    except av.error.FFmpegError as e:
        raise MediaError(f"cannot open media: {e}") from None
    with container:
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
        rotation = 0
        w, h = vs.codec_context.width, vs.codec_context.height
        if not w or not h:
            raise MediaError("video stream has no frame size (corrupt header)")
        if duration <= 0 or tb is None:
            plan = False
        targets = target_times(start, duration, num_frames) if duration > 0 else []
        sampler = None
        if plan:
            targets_pts = [round(t / tb) for t in targets]
            avcc = _avcc_length_size(vs)
            sampler = _GopSampler(vs, targets_pts, avcc, skip_nonref=vs.codec_context.name == "h264")
        all_frames: list[tuple[float, av.VideoFrame]] = []
        audio_chunks: list[np.ndarray] = []
        resampler = av.AudioResampler(format="s16", layout="mono", rate=audio_rate) if a_s else None
        streams = [vs] + ([a_s] if a_s else [])
        try:
            for packet in container.demux(streams):
                if packet.stream.type == "audio":
                    if packet.size:
                        for af in packet.decode():
                            audio_chunks += [r.to_ndarray().reshape(-1) for r in resampler.resample(af)]
                    continue
                if not packet.size:
                    continue
                if sampler is not None:
                    if packet.pts is None:
                        raise MediaError("packets without timestamps")
                    sampler.add(packet)
                else:
                    all_frames += [(f.pts * tb if tb and f.pts is not None else 0.0, f) for f in packet.decode()]
            if sampler is not None:
                sampler.finish_gop(last=True)
            else:
                all_frames += [(f.pts * tb if tb and f.pts is not None else 0.0, f)
                               for f in vs.codec_context.decode(None)]
        except av.error.FFmpegError as e:
            raise MediaError(f"decode error: {e}") from None
        if resampler is not None and audio_chunks:
            audio_chunks += [r.to_ndarray().reshape(-1) for r in resampler.resample(None)]

        if sampler is not None:
            if len(sampler.kept) < len(targets):
                raise MediaError(f"truncated: only {len(sampler.kept)} of {len(targets)} sample points decoded")
            kept = [sampler.kept[i] for i in range(len(targets))]
            decoded = sampler.decoded
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
            decoded = len(all_frames)
        rotation = int(getattr(kept[0], "rotation", 0) or 0)
        dw, dh = _display_size(w, h, rotation)
        return Probed(
            duration=round(float(duration), 4),
            fps=round(fps, 4),
            width=dw,
            height=dh,
            vcodec=vs.codec_context.name,
            acodec=a_s.codec_context.name if a_s else None,
            rotation=rotation,
            frames=[_resize_to_short_side(f, short_side, rotation) for f in kept],
            frame_times=[round(float(f.pts * tb) if tb and f.pts is not None else 0.0, 4) for f in kept],
            audio=np.concatenate(audio_chunks).astype(np.int16) if audio_chunks else None,
            decoded_frames=decoded,
        )


def encode_flac(samples: np.ndarray, rate: int) -> bytes:
    """Mono int16 samples -> FLAC bytes (lossless, in memory)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as out:
        st = out.add_stream("flac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1).astype(np.int16), format="s16", layout="mono")
        frame.sample_rate = rate
        for p in st.encode(frame):
            out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return buf.getvalue()


def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    """FLAC bytes -> (mono float32 samples in [-1, 1], sample rate)."""
    with av.open(io.BytesIO(data)) as c:
        st = c.streams.audio[0]
        chunks = [f.to_ndarray().reshape(f.layout.nb_channels if hasattr(f.layout, "nb_channels") else 1, -1)[0]
                  for f in c.decode(st)]
        rate = st.codec_context.sample_rate
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    return (pcm.astype(np.float32) / 32768.0 if pcm.dtype == np.int16 else pcm.astype(np.float32)), rate
