"""Depth stage: a depth map per sampled frame, in VIDAL's encoding (uint16 PNG, millimetres, clipped at 10 m).

Reads only ``frames`` (probe's JPEGs). Each actor loads one model (``depth.model``; GLPN trained on NYU
by default, as VIDAL used) and runs it over the frames of all videos in a batch: predicted at the
model's resolution, resized back to the frame's size, clipped to [0, 10] m, stored in millimetres.
Relative-depth models (DPT / MiDaS, Depth Anything relative, and the original MiDaS release files read
with ``midas:<file.pt>``) have no metric scale: their per-frame depth order is stored over the same
0-10000 range (0 nearest) with ``depth_kind = "relative"``.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field, field_validator, model_validator

from contracts.encodings import encode_depth_png
from contracts.shard_format import DEPTH_MAX_MM
from contracts.status import FAILED, OK
from stages.backends import parse_model_spec
from stages.backends.batching import BatchRunner, Frame, FrameModelConfig, ItemError, map_frames
from stages.backends.depth import TINY_ARCHS
from stages.base import Stage

log = logging.getLogger("vidal")


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
        family, name = parse_model_spec(v)
        if family not in ("hf", "midas", "tiny"):
            raise ValueError(f"depth models are hf:<id or dir>, midas:<file.pt> or tiny, not {family}:")
        if family == "tiny" and name and name not in TINY_ARCHS:
            raise ValueError(f"tiny depth models are tiny, {', '.join('tiny:' + a for a in TINY_ARCHS)}")
        return v

    @field_validator("midas_variant")
    @classmethod
    def _known_variant(cls, v: str | None) -> str | None:
        from stages.backends.midas_dpt import VARIANTS

        if v is not None and v not in VARIANTS:
            raise ValueError(f"expected one of {', '.join(VARIANTS)}")
        return v

    @model_validator(mode="after")
    def _midas_variant_known(self) -> DepthConfig:
        family, name = parse_model_spec(self.model)
        if family == "midas" and self.midas_variant is None:
            from stages.backends.midas import variant_from_name
            from stages.backends.midas_dpt import VARIANTS

            if variant_from_name(name) is None:
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


class DepthStage(Stage):
    name = "depth"
    upstream = ("probe",)
    reads = ("video_id", "frames")
    uses_model = True
    Config = DepthConfig
    schema = pa.schema(
        [
            ("depth", pa.list_(pa.binary())),  # uint16 PNG per frame, millimetres
            ("depth_kind", pa.string()),  # metric | relative
            ("depth_model", pa.string()),
        ]
    )
    config: DepthConfig

    def models(self) -> dict[str, str]:
        return {"depth": self.config.model}

    def check(self) -> None:
        # On the driver: a missing, truncated or foreign checkpoint fails here, before any actor starts
        # and before --force deletes the stage's earlier output.
        if self.config.check_on_driver:
            from stages.backends.depth import check_spec

            check_spec(self.config.model, self.config.midas_variant)

    def setup(self) -> None:
        from stages.backends.depth import load_depth_model

        c = self.config
        self.device, dtype = c.pick()
        self.net = load_depth_model(
            c.model, self.device, dtype, c.depth_kind, c.min_side, c.max_side, c.midas_variant
        )
        self.runner = BatchRunner(c.model_batch, self.device, what="depth model")
        self.encoder = c.encoder_pool()
        log.info("depth: %s (%s) on %s, autocast %s", c.model, self.net.kind, self.device, dtype)

    def _predict(self, frames: list[Frame]) -> list[torch.Tensor]:
        depth = self.net.predict([f.image for f in frames])
        return list(to_millimetres(depth, self.net.kind).cpu())

    def process(self, batch: pa.Table) -> pa.Table:
        ids = batch["video_id"].to_pylist()
        results = map_frames(batch["frames"].to_pylist(), self._predict, self.runner, self.config.gpu_decode)
        level = self.config.png_compression
        encoded = {
            i: self.encoder.map(lambda m: encode_depth_png(m.numpy().astype(np.uint16), level), res)
            for i, res in enumerate(results)
            if not isinstance(res, ItemError)
        }
        rows: list[dict[str, Any]] = []
        for i, (vid, res) in enumerate(zip(ids, results)):
            if isinstance(res, ItemError):
                rows.append({"video_id": vid, "status": FAILED, "error": f"depth: {res.reason}"})
                continue
            rows.append(
                {
                    "video_id": vid,
                    "status": OK,
                    "error": None,
                    "depth": list(encoded[i]),
                    "depth_kind": self.net.kind,
                    "depth_model": self.config.model,
                }
            )
        return self.rows_to_table(rows)
