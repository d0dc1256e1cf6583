"""Depth stage: a depth map per sampled frame, in VIDAL's encoding (uint16 PNG, millimetres, clipped at 10 m).

Reads only ``frames`` (probe's JPEGs). Each actor loads one model (``depth.model``; GLPN trained on NYU
by default, as VIDAL used) and runs it over the frames of all videos in a batch: predicted at the
model's resolution, resized back to the frame's size, clipped to [0, 10] m, stored in millimetres.
Relative-depth models (DPT / MiDaS, Depth Anything relative, and the original MiDaS release files read
with ``midas:<file.pt>``) have no metric scale: their per-frame depth order is stored over the same
0-10000 range (0 nearest) with ``depth_kind = "relative"``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field, field_validator, model_validator

from contracts import backends
from contracts.encodings import encode_depth_png
from contracts.shard_format import DEPTH_MAX_MM
from stages.backends.batching import Frame
from stages.base import model_name
from stages.frame_stage import FrameModelConfig, FrameStage


class DepthConfig(FrameModelConfig):
    model: str = Field(
        "hf:vinvino02/glpn-nyu",
        description="hf:<hub id or local dir>, midas:<original MiDaS .pt file>, or tiny[:glpn|dpt|depth_anything]",
    )
    midas_variant: str | None = Field(
        None,
        description="the variant of a midas: file (e.g. dpt_beit_large_512); default: from its file name",
    )
    depth_kind: Literal["auto", "metric", "relative"] = Field(
        "auto", description="auto: from the model config (GLPN and metric Depth Anything give metres)"
    )
    min_side: int = Field(32, ge=1, description="smaller frames are upscaled before the model")
    max_side: int = Field(1024, ge=32, description="larger frames are downscaled before the model")
    png_compression: int = Field(1, ge=0, le=9, description="zlib level of the PNGs (1: fast, 9: small)")

    @field_validator("model")
    @classmethod
    def _known_family(cls, v: str) -> str:
        return model_name("depth", v)

    @field_validator("midas_variant")
    @classmethod
    def _known_variant(cls, v: str | None) -> str | None:
        from stages.backends.midas_dpt import VARIANTS

        if v is not None and v not in VARIANTS:
            raise ValueError(f"expected one of {', '.join(VARIANTS)}")
        return v

    @model_validator(mode="after")
    def _midas_variant_known(self) -> DepthConfig:
        spec = backends.parse("depth", self.model)
        if spec.family == "midas" and self.midas_variant is None:
            from stages.backends.midas import variant_from_name
            from stages.backends.midas_dpt import VARIANTS

            if variant_from_name(spec.name) is None:
                raise ValueError(
                    f"depth.model {self.model!r}: the file name names no MiDaS variant; set "
                    f"depth.midas_variant to one of {', '.join(VARIANTS)}"
                )
        return self


def to_millimetres(depth: torch.Tensor, kind: str) -> torch.Tensor:
    """Metres (metric) or [0, 1] depth order (relative) -> int32 millimetres in [0, DEPTH_MAX_MM]."""
    scale = DEPTH_MAX_MM if kind == "relative" else 1000.0
    mm = (depth.float() * scale).round()
    return torch.nan_to_num(mm, nan=0.0).clamp(0, DEPTH_MAX_MM).to(torch.int32)


class DepthStage(FrameStage):
    name = "depth"
    Config = DepthConfig
    schema = pa.schema(
        [
            ("depth", pa.list_(pa.binary())),  # uint16 PNG per frame, millimetres
            ("depth_kind", pa.string()),  # metric | relative
            ("depth_model", pa.string()),
        ]
    )
    column, model_column = "depth", "depth_model"
    load_options = ("depth_kind", "min_side", "max_side", "midas_variant")
    config: DepthConfig

    def infer(self, frames: list[Frame], video_ids: list[str]) -> list[torch.Tensor]:
        depth = self.net.predict([f.image for f in frames])
        return list(to_millimetres(depth, self.net.kind).cpu())

    def encode(self, output: torch.Tensor) -> bytes:
        return encode_depth_png(output.numpy().astype(np.uint16), self.config.png_compression)

    def row_columns(self) -> dict[str, Any]:
        return {"depth_kind": self.net.kind, **super().row_columns()}
