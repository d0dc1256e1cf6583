"""Infrared stage: RGB -> thermal infrared per sampled frame, stored as 8-bit single-channel JPEG.

Reads only ``frames``. VIDAL used sRGB-TIR, a MUNIT translator: ``infrared.model: munit:<translation_weights.pt>``
loads that checkpoint into our own MUNIT generator (content encoder of the RGB domain, decoder of the
thermal domain, a random style code per frame seeded by ``video_id`` and frame index, so reruns give
the same images). ``cyclegan:<file>`` loads a ResNet CycleGAN generator (pytorch-CycleGAN-and-pix2pix
or MMagic checkpoints); ``tiny`` is a random-weight generator for tests and the demo.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import pyarrow as pa
import torch
from pydantic import Field, field_validator

from contracts.encodings import encode_jpeg
from contracts.status import FAILED, OK
from stages.backends import parse_model_spec
from stages.backends.batching import BatchRunner, Frame, FrameModelConfig, ItemError, map_frames
from stages.backends.munit import MunitArch
from stages.base import Stage

log = logging.getLogger("vidal")


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
        family, name = parse_model_spec(v)
        if family not in ("munit", "cyclegan", "tiny"):
            raise ValueError(f"infrared models are munit:<file>, cyclegan:<file> or tiny, not {family}:")
        if family == "tiny" and name not in ("", "munit", "cyclegan"):
            raise ValueError("tiny infrared models are tiny, tiny:munit, tiny:cyclegan")
        return v


class InfraredStage(Stage):
    name = "infrared"
    upstream = ("probe",)
    reads = ("video_id", "frames")
    uses_model = True
    Config = InfraredConfig
    schema = pa.schema(
        [
            ("ir", pa.list_(pa.binary())),  # 8-bit single-channel JPEG per frame
            ("infrared_model", pa.string()),
        ]
    )
    config: InfraredConfig

    def models(self) -> dict[str, str]:
        return {"infrared": self.config.model}

    def _model_kwargs(self) -> dict[str, Any]:
        c = self.config
        return {
            "arch": c.munit,
            "source": c.source_domain,
            "target": c.target_domain,
            "allow_pickle": c.allow_pickle,
        }

    def check(self) -> None:
        # On the driver: a missing, truncated or foreign checkpoint fails here, before any actor starts
        # and before --force deletes the stage's earlier output.
        if self.config.check_on_driver:
            from stages.backends.infrared import check_spec

            check_spec(self.config.model, **self._model_kwargs())

    def setup(self) -> None:
        from stages.backends.infrared import load_infrared_model

        c = self.config
        self.device, dtype = c.pick()
        self.net = load_infrared_model(
            c.model,
            self.device,
            dtype,
            short_side=c.short_side,
            max_side=c.max_side,
            output_range=c.output_range,
            seed=c.seed,
            **self._model_kwargs(),
        )
        self.runner = BatchRunner(c.model_batch, self.device, what="infrared model")
        self.encoder = c.encoder_pool()
        log.info("infrared: %s on %s, autocast %s", c.model, self.device, dtype)

    def process(self, batch: pa.Table) -> pa.Table:
        ids = batch["video_id"].to_pylist()

        def translate(frames: list[Frame]) -> list[torch.Tensor]:
            keys = [f"{ids[f.row]}/{f.index}" for f in frames]  # the style seed: video and frame
            return list(self.net.translate([f.image for f in frames], keys).cpu())

        results = map_frames(batch["frames"].to_pylist(), translate, self.runner, self.config.gpu_decode)
        quality = self.config.jpeg_quality
        encoded = {
            i: self.encoder.map(lambda t: encode_jpeg(t.numpy(), quality), res)
            for i, res in enumerate(results)
            if not isinstance(res, ItemError)
        }
        rows: list[dict[str, Any]] = []
        for i, (vid, res) in enumerate(zip(ids, results)):
            if isinstance(res, ItemError):
                rows.append({"video_id": vid, "status": FAILED, "error": f"infrared: {res.reason}"})
                continue
            rows.append(
                {
                    "video_id": vid,
                    "status": OK,
                    "error": None,
                    "ir": list(encoded[i]),
                    "infrared_model": self.config.model,
                }
            )
        return self.rows_to_table(rows)
