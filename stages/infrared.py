"""Infrared stage: RGB -> thermal infrared per sampled frame, stored as 8-bit single-channel JPEG.

Reads only ``frames``. VIDAL used sRGB-TIR, a MUNIT translator: ``infrared.model: munit:<translation_weights.pt>``
loads that checkpoint into our own MUNIT generator (content encoder of the RGB domain, decoder of the
thermal domain, a random style code per frame seeded by ``video_id`` and frame index, so reruns give
the same images). ``cyclegan:<file>`` loads a ResNet CycleGAN generator (pytorch-CycleGAN-and-pix2pix
or MMagic checkpoints); ``tiny`` is a random-weight generator for tests and the demo.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
import torch
from pydantic import Field, field_validator

from contracts.encodings import encode_jpeg
from stages.backends.batching import Frame
from stages.backends.munit import MunitArch
from stages.base import model_name
from stages.frame_stage import FrameModelConfig, FrameStage


class InfraredConfig(FrameModelConfig):
    model: str = Field(
        "munit:translation_weights.pt",
        description="munit:<checkpoint> (sRGB-TIR), cyclegan:<checkpoint>, or tiny[:munit|cyclegan]",
    )
    model_batch: int = Field(16, ge=1, description="frames per forward pass (halved on CUDA out-of-memory)")
    munit: MunitArch = Field(
        default_factory=MunitArch, description="MUNIT generator shape (sRGB-TIR's by default)"
    )
    source_domain: str = Field(
        "b", description="MUNIT: the checkpoint domain whose content encoder reads RGB (sRGB-TIR: b)"
    )
    target_domain: str = Field(
        "a",
        description="MUNIT: the domain whose decoder draws thermal (sRGB-TIR: a); "
        "MMagic CycleGAN: the generators.<domain> to use",
    )
    short_side: int | None = Field(
        400,
        ge=8,
        description="frames are scaled to this short side for the "
        "model (sRGB-TIR trained on 400x640); null keeps the frame's size",
    )
    max_side: int = Field(1280, ge=8, description="cap on the long side given to the model")
    output_range: Literal["minmax", "fixed"] = Field(
        "minmax",
        description="minmax: stretch each frame to 0-255 (as sRGB-TIR's inference script saves); "
        "fixed: map the generator's [-1, 1] linearly",
    )
    seed: int = Field(0, description="mixed into every per-frame style seed")
    jpeg_quality: int = Field(90, ge=10, le=100)
    allow_pickle: bool = Field(
        False,
        description="let torch.load unpickle arbitrary objects (only for "
        "checkpoints you trust, e.g. MMagic files with metadata)",
    )

    @field_validator("model")
    @classmethod
    def _known_family(cls, v: str) -> str:
        return model_name("infrared", v)


class InfraredStage(FrameStage):
    name = "infrared"
    Config = InfraredConfig
    schema = pa.schema(
        [
            ("ir", pa.list_(pa.binary())),  # 8-bit single-channel JPEG per frame
            ("infrared_model", pa.string()),
        ]
    )
    column, model_column = "ir", "infrared_model"
    load_options = (
        "munit",
        "source_domain",
        "target_domain",
        "allow_pickle",
        "short_side",
        "max_side",
        "output_range",
        "seed",
    )
    config: InfraredConfig

    def infer(self, frames: list[Frame], video_ids: list[str]) -> list[torch.Tensor]:
        keys = [f"{video_ids[f.row]}/{f.index}" for f in frames]  # the style seed: video and frame
        return list(self.net.translate([f.image for f in frames], keys).cpu())

    def encode(self, output: torch.Tensor) -> bytes:
        return encode_jpeg(output.numpy(), self.config.jpeg_quality)
