"""Clip stage: split videos longer than ``clip.max_duration`` at scene cuts into rows of their own.

Each clip is a row ``{parent}-c{k}`` with ``parent_id``, ``start``, ``end`` (seconds, stream time), its
own ``num_frames`` frames (JPEG, like probe) and its audio span (FLAC). A scene longer than
``max_duration`` is cut at a fixed stride of ``max_duration``; a piece shorter than ``min_duration``
(a flash between two cuts, the tail of a stride) is dropped. Videos up to ``max_duration`` pass
through unchanged: probe's row, same id, ``start`` 0 and ``end`` the duration. The parent of a split
video gets a ``filtered`` row saying into how many clips it went; that row is what makes a rerun skip
it (resume works on ``video_id``).

One decode per long video: every frame is shrunk once for the cut detector and the motion meter
(``stages.media.scenes``), and the frames of the clip being built are kept at output size on a grid of at
most ~10 per second; when the clip's end is seen (a cut, or the stride) its frames are chosen from
that grid (the first at or after each target time, so within 0.1 s of it) and the grid is dropped.
Memory stays at one clip's grid whatever the video's length; audio is decoded in the same pass.

Probe's ``max_duration`` filters before this stage: in a run with clip it is the longest video worth
splitting (null: any), and ``clip.max_duration`` is the cap on what comes out (VIDAL: 20 s).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from contracts import store
from contracts.encodings import encode_flac, encode_jpeg
from contracts.shard_format import NUM_FRAMES, SAMPLE_RATE
from contracts.status import FILTERED, OK
from stages.base import RowError, RowFiltered, Stage, StageConfig, run_isolated
from stages.media.audio import AudioTrack
from stages.media.decode import FrameConverter, MediaError, open_media, target_times
from stages.media.scenes import ANALYSIS_SHORT_SIDE, CutDetector, MotionMeter
from stages.probe import ProbeStage

GRID_HZ = 10  # output-size frames kept per second of the open clip
MAX_ID = 64


class ClipConfig(StageConfig):
    batch_size: int = 2
    max_duration: float = Field(20.0, gt=0, description="seconds; longer videos are split (VIDAL: 20)")
    min_duration: float = Field(2.0, ge=0, description="seconds; shorter pieces of a split are dropped")
    num_frames: int = Field(NUM_FRAMES, ge=1, le=64)
    short_side: int = Field(256, ge=16, description="clip frames are resized to this short side")
    jpeg_quality: int = Field(90, ge=10, le=100)
    audio_rate: int = Field(SAMPLE_RATE, ge=8000)
    min_content: float = Field(15.0, gt=0, description="HSV difference (0-255) a cut reaches at least")
    adaptive_ratio: float = Field(
        3.0, ge=1, description="a cut is this many times the recent mean difference"
    )
    motion: bool = Field(
        True, description="measure motion (also decodes the short videos, at low resolution)"
    )
    min_motion: float | None = Field(
        None, ge=0, description="grey levels per 0.1 s; stiller clips are filtered"
    )
    decode_threads: int = Field(1, ge=0, description="decoder threads per video (0: FFmpeg's choice)")

    @model_validator(mode="after")
    def _durations_ordered(self) -> ClipConfig:
        if self.min_duration >= self.max_duration:
            raise ValueError(
                f"min_duration ({self.min_duration}) must be below max_duration ({self.max_duration})"
            )
        if self.min_motion is not None and not self.motion:
            raise ValueError("min_motion needs motion: true")
        return self


def clip_id(parent: str, k: int) -> str:
    """``{parent}-c{k}``; a parent id too long for that keeps a prefix and a hash of the whole id."""
    suffix = f"-c{k}"
    if len(parent) + len(suffix) <= MAX_ID:
        return parent + suffix
    digest = hashlib.sha1(parent.encode()).hexdigest()[:12]
    return f"{parent[: MAX_ID - len(suffix) - 13]}-{digest}{suffix}"


@dataclass
class Clip:
    start: float
    end: float
    frames: list[np.ndarray]
    frame_times: list[float]
    motion: float | None


@dataclass
class _Segmenter:
    """Turns the stream of decoded frames into clips, closing one at each cut or stride."""

    min_duration: float
    max_duration: float
    num_frames: int
    detector: CutDetector
    keep_frames: bool = True
    clips: list[Clip] = field(default_factory=list)
    start: float | None = None
    grid: list[tuple[float, np.ndarray]] = field(default_factory=list)
    motion: MotionMeter = field(default_factory=MotionMeter)
    last_t: float = 0.0

    def push(self, t: float, small: np.ndarray, to_full: Callable[[], np.ndarray], on_grid: bool) -> None:
        cut = self.detector.push(small)
        if self.start is None:
            self.start = t
        elif (
            cut or t + (t - self.last_t) - self.start > self.max_duration + 1e-6
        ):  # frame t would end past max
            self.close(t)
            self.start = t
        self.motion.push(t, small)
        if self.keep_frames and (on_grid or not self.grid):  # a clip's first frame is always kept
            self.grid.append((t, to_full()))
        self.last_t = t

    def close(self, end: float) -> None:
        start, grid, self.grid = self.start, self.grid, []
        motion, self.motion = self.motion.value, MotionMeter()
        if start is None or end - start < self.min_duration - 1e-6:
            return
        frames, times = [], []
        if self.keep_frames:
            grid_t = np.array([g[0] for g in grid])
            for target in target_times(start, end - start, self.num_frames):
                i = min(int(np.searchsorted(grid_t, target - 1e-6)), len(grid) - 1)
                frames.append(grid[i][1])
                times.append(round(grid[i][0], 4))
        self.clips.append(Clip(round(start, 4), round(end, 4), frames, times, motion))


def scan_video(
    source: Any, seg: _Segmenter, *, short_side: int, audio_rate: int, threads: int = 1
) -> tuple[list[Clip], np.ndarray | None, float]:
    """Decode once: clips from ``seg``, the whole audio track (int16 mono; ``audio_rate=0``: none) and its start."""
    with open_media(source) as container:
        if not container.streams.video:
            raise MediaError("no video stream")
        vs = container.streams.video[0]
        vs.thread_count = threads
        a_s = container.streams.audio[0] if container.streams.audio and audio_rate else None
        fps = float(vs.average_rate or vs.guessed_rate or 25)
        tb = (
            float(vs.time_base or 0) or 1.0 / fps
        )  # frames drained at the end carry no time base of their own
        every = max(1, int(fps // GRID_HZ))
        small_of, full_of = FrameConverter(ANALYSIS_SHORT_SIDE), FrameConverter(short_side)
        audio = AudioTrack(audio_rate) if a_s else None
        audio_start: float | None = None
        n = 0
        try:
            for packet in container.demux([vs, a_s] if a_s else [vs]):
                if packet.stream is a_s:
                    for af in a_s.codec_context.decode(packet if packet.size else None):
                        audio_start = af.time if audio_start is None and af.time is not None else audio_start
                        audio.add(af)
                    continue
                for f in vs.codec_context.decode(packet if packet.size else None):
                    seg.push((f.pts or 0) * tb, small_of(f), lambda f=f: full_of(f), n % every == 0)
                    n += 1
        except av.error.FFmpegError as e:
            raise MediaError(f"decode error: {e}") from None
        if not n:
            raise MediaError("no video frames could be decoded")
        seg.close(seg.last_t + 1.0 / fps)
        samples = audio.finish() if audio is not None else None  # the resampler's tail too (under 1 s)
    return seg.clips, samples, audio_start or 0.0


def detect_cuts(source: Any, *, min_content: float = 15.0, adaptive_ratio: float = 3.0) -> list[float]:
    """Times (seconds) of the frames that start a new scene: the detector alone, for tests and benchmarks."""
    seg = _Segmenter(
        0.0,
        float("inf"),
        0,
        CutDetector(min_content=min_content, adaptive_ratio=adaptive_ratio),
        keep_frames=False,
    )
    clips, _, _ = scan_video(source, seg, short_side=ANALYSIS_SHORT_SIDE, audio_rate=0)
    return [c.start for c in clips[1:]]


def audio_span(
    samples: np.ndarray | None, audio_start: float, start: float, end: float, rate: int
) -> bytes | None:
    """FLAC of the samples between two stream times; None without audio there."""
    if samples is None:
        return None
    lo, hi = (max(0, round((t - audio_start) * rate)) for t in (start, end))
    piece = samples[lo:hi]
    return encode_flac(piece, rate) if len(piece) else None


class ClipStage(Stage):
    name = "clip"
    upstream = ("probe", "download")
    reads = ("video_id", "media", *ProbeStage.schema.names)
    Config = ClipConfig
    schema = pa.schema(
        [
            *ProbeStage.schema,
            ("parent_id", pa.string()),
            ("start", pa.float64()),
            ("end", pa.float64()),
            ("motion", pa.float64()),
            ("clips", pa.int32()),
        ]
    )  # on a split parent's own row: how many clips it has
    config: ClipConfig

    @classmethod
    def plan_upstream(cls, config: Any, present: list[str]) -> tuple[list[str], list[str]]:
        probe_max = config.probe.max_duration
        if probe_max is not None and probe_max <= config.clip.max_duration:
            from contracts.manifest import StageInputError

            raise StageInputError(  # a config mistake: nothing long reaches this stage to be split
                f"probe.max_duration={probe_max} filters every video the clip stage would split "
                f"(clip.max_duration={config.clip.max_duration}); set probe.max_duration to null (or the "
                f"longest video to split) and rerun probe with --force"
            )
        return super().plan_upstream(config, present)

    def reconcile(self) -> dict[str, int]:
        """Drop the row of a split parent whose clips are not all in the manifest (a run killed between
        two part writes), so that this run splits it again; the clips it rewrites (same ids) are deduped."""
        from contracts import manifest

        root = self.context.root
        if not manifest.part_files(root, self.name):
            return {}
        t = manifest.read_columns(root, self.name, ["video_id", "parent_id", "clips"])
        have = Counter(
            p for v, p in zip(t["video_id"].to_pylist(), t["parent_id"].to_pylist()) if p and p != v
        )
        short = [v for v, n in zip(t["video_id"].to_pylist(), t["clips"].to_pylist()) if n and have[v] < n]
        if not short:
            return {}
        drop = pa.array(short, pa.string())
        return {
            "split_videos_redone": manifest.drop_rows(
                root, self.name, lambda x: pc.is_in(x["video_id"], drop), columns=("video_id",)
            )
        }

    def process(self, batch: pa.Table) -> pa.Table:
        out: list[dict[str, Any]] = []
        for row in batch.to_pylist():
            result = run_isolated(row["video_id"], lambda r=row: {"rows": self.clip_rows(r)})
            out += result["rows"] if result["status"] == OK else [result]
        return self.rows_to_table(out)

    def clip_rows(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """The output rows for one video: itself, or its clips then its own ``filtered`` row."""
        c, vid = self.config, row["video_id"]
        long = row["duration"] > c.max_duration
        if not long and not c.motion:
            return [self._passed(row, None)]
        media = row.get("media")
        if not media:
            raise RowError("no media file recorded by the download stage")
        seg = _Segmenter(
            c.min_duration if long else 0.0,
            c.max_duration if long else float("inf"),
            c.num_frames,
            CutDetector(min_content=c.min_content, adaptive_ratio=c.adaptive_ratio),
            keep_frames=long,
        )
        try:
            source = media if not store.is_remote(media) else store.open_input(media)
            clips, samples, a0 = scan_video(
                source, seg, short_side=c.short_side, audio_rate=c.audio_rate, threads=c.decode_threads
            )
        except FileNotFoundError:
            raise RowError(f"media file not found: {media}") from None
        except MediaError as e:
            raise RowError(str(e)) from None
        if not long:  # its scenes' motion weighted by their length (a cut's jump is not motion)
            spans = [(cl.motion or 0.0, cl.end - cl.start) for cl in clips]
            total = sum(d for _, d in spans)
            return [self._passed(row, round(sum(m * d for m, d in spans) / total, 4) if total > 0 else 0.0)]
        rows = [
            self._clip_row(row, k, clip, audio_span(samples, a0, clip.start, clip.end, c.audio_rate))
            for k, clip in enumerate(clips)
        ]
        if not rows:
            raise RowFiltered(
                f"duration {row['duration']:.2f}s above clip.max_duration {c.max_duration}s "
                f"and no piece of it lasts clip.min_duration {c.min_duration}s"
            )
        ids = f"{rows[0]['video_id']}..{rows[-1]['video_id']}" if len(rows) > 1 else rows[0]["video_id"]
        rows.append(
            {
                "video_id": vid,
                "status": FILTERED,
                "clips": len(rows),
                "error": (
                    f"split into {len(rows)} clips ({ids}): duration {row['duration']:.2f}s above clip.max_duration "
                    f"{c.max_duration}s"
                ),
            }
        )
        return rows

    def _motion_status(self, motion: float | None) -> dict[str, Any]:
        m = self.config.min_motion
        if m is not None and motion is not None and motion < m:
            return {"status": FILTERED, "error": f"motion {motion:.3f} below clip.min_motion {m}"}
        return {"status": OK, "error": None}

    def _passed(self, row: dict[str, Any], motion: float | None) -> dict[str, Any]:
        facts = {key: row.get(key) for key in ProbeStage.schema.names}
        return {
            **facts,
            "video_id": row["video_id"],
            "parent_id": row["video_id"],
            "start": 0.0,
            "end": row["duration"],
            "motion": motion,
            **self._motion_status(motion),
        }

    def _clip_row(self, row: dict[str, Any], k: int, clip: Clip, audio: bytes | None) -> dict[str, Any]:
        c = self.config
        facts = {key: row.get(key) for key in ("fps", "width", "height", "vcodec", "acodec", "rotation")}
        return {
            **facts,
            "video_id": clip_id(row["video_id"], k),
            "parent_id": row["video_id"],
            "start": clip.start,
            "end": clip.end,
            "duration": round(clip.end - clip.start, 4),
            "frames": [encode_jpeg(f, c.jpeg_quality) for f in clip.frames],
            "frame_times": clip.frame_times,
            "has_audio": audio is not None,
            "audio": audio,
            "motion": clip.motion,
            **self._motion_status(clip.motion),
        }

    def models(self) -> dict[str, str]:
        return {"clip": "pyav-hsv-adaptive"}
