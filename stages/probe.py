"""Probe stage: stream facts, 8 uniformly sampled frames (JPEG, short side 256) and 16 kHz mono FLAC.

Reads the media file the download stage recorded (``media``), decodes only what the sampled frames
depend on (see ``stages.media.decode``), and applies the duration and resolution filters from config.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pydantic import Field

from contracts import store
from contracts.encodings import encode_flac, encode_jpeg
from contracts.shard_format import NUM_FRAMES, SAMPLE_RATE
from stages.base import RowError, RowFiltered, Stage, StageConfig
from stages.media.decode import MediaError, probe_file


class ProbeConfig(StageConfig):
    batch_size: int = 4
    num_frames: int = Field(NUM_FRAMES, ge=1, le=64)
    short_side: int = Field(256, ge=16, description="frames are resized to this short side")
    jpeg_quality: int = Field(90, ge=10, le=100)
    audio_rate: int = Field(SAMPLE_RATE, ge=8000)
    min_duration: float = Field(0.0, ge=0, description="seconds; shorter videos are filtered")
    max_duration: float | None = Field(None, gt=0, description="seconds; longer are filtered (VIDAL: 20)")
    min_short_side: int = Field(64, ge=1, description="pixels; smaller videos are filtered")
    max_long_side: int = Field(4096, ge=16, description="pixels; larger videos are filtered")
    planned_decode: bool = Field(True, description="decode only what the sampled frames need")
    decode_threads: int = Field(1, ge=0, description="decoder threads per video (0: FFmpeg's choice)")


class ProbeStage(Stage):
    name = "probe"
    upstream = ("download",)
    reads = ("video_id", "media")
    Config = ProbeConfig
    schema = pa.schema(
        [
            ("duration", pa.float64()),
            ("fps", pa.float64()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("vcodec", pa.string()),
            ("acodec", pa.string()),
            ("rotation", pa.int32()),
            ("frames", pa.list_(pa.binary())),  # JPEG, NUM_FRAMES of them
            ("frame_times", pa.list_(pa.float64())),
            ("has_audio", pa.bool_()),
            ("audio", pa.binary()),  # FLAC, 16 kHz mono; null without audio
        ]
    )
    config: ProbeConfig

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        c = self.config
        media = row.get("media")
        if not media:
            raise RowError("no media file recorded by the download stage")
        try:
            source = media if not store.is_remote(media) else store.open_input(media)
            p = probe_file(
                source,
                num_frames=c.num_frames,
                short_side=c.short_side,
                audio_rate=c.audio_rate,
                planned=c.planned_decode,
                threads=c.decode_threads,
            )
        except FileNotFoundError:
            raise RowError(f"media file not found: {media}") from None
        except MediaError as e:
            raise RowError(str(e)) from None
        if p.duration < c.min_duration:
            raise RowFiltered(f"duration {p.duration:.2f}s below min_duration {c.min_duration}s")
        if c.max_duration is not None and p.duration > c.max_duration:
            raise RowFiltered(f"duration {p.duration:.2f}s above max_duration {c.max_duration}s")
        if min(p.width, p.height) < c.min_short_side:
            raise RowFiltered(f"resolution {p.width}x{p.height} below min_short_side {c.min_short_side}")
        if max(p.width, p.height) > c.max_long_side:
            raise RowFiltered(f"resolution {p.width}x{p.height} above max_long_side {c.max_long_side}")
        audio = encode_flac(p.audio, c.audio_rate) if p.audio is not None and len(p.audio) else None
        return {
            "duration": p.duration,
            "fps": p.fps,
            "width": p.width,
            "height": p.height,
            "vcodec": p.vcodec,
            "acodec": p.acodec,
            "rotation": p.rotation,
            "frames": [encode_jpeg(f, c.jpeg_quality) for f in p.frames],
            "frame_times": p.frame_times,
            "has_audio": audio is not None,
            "audio": audio,
        }

    def models(self) -> dict[str, str]:
        return {"probe": "pyav"}
