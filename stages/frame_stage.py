"""What depth and infrared share: a model run over every sampled frame, one encoded image out per frame.

A frame stage reads probe's JPEG ``frames``, decodes them (on the GPU when it can), runs its model over
same-shaped batches of frames from all the videos of a batch (``stages.backends.batching.map_frames``),
encodes each output on a thread pool (zlib and libjpeg release the GIL) and writes one list of images
per video. A subclass keeps only what differs: the model kind and its load options, ``infer`` (frames
-> one tensor per frame) and ``encode`` (tensor -> bytes, from ``contracts.encodings``), and the
columns it records beside the images.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import pyarrow as pa
import torch
from pydantic import Field

from contracts import backends
from stages.backends.batching import BatchRunner, Frame, ItemError, map_frames
from stages.base import ModelStageConfig, Results, Stage

log = logging.getLogger("vidal")


class FrameModelConfig(ModelStageConfig):
    """Settings shared by stages that run a model over video frames (depth and infrared)."""

    batch_size: int = Field(16, ge=1, description="videos per process() call; frames are batched across them")
    model: str = Field("tiny", description="the model, as family:name_or_path")
    model_batch: int = Field(32, ge=1, description="frames per forward pass (halved on CUDA out-of-memory)")
    gpu_decode: bool = Field(True, description="decode JPEG frames with nvJPEG on CUDA")
    encode_threads: int = Field(0, ge=0, description="threads encoding the output images (0: num_cpus)")

    def encoder_pool(self) -> ThreadPoolExecutor:
        """Threads for PNG/JPEG encoding (zlib and libjpeg release the GIL, so they run in parallel)."""
        return ThreadPoolExecutor(
            max(1, self.encode_threads or int(self.num_cpus)), thread_name_prefix="encode"
        )


class FrameStage(Stage):
    """A model stage mapping each frame of a row to one encoded image; see the module docstring.

    The stage's ``name`` is its model kind in ``contracts.backends``; ``load_options`` names the config
    keys handed to the backend as options (by ``check`` on the driver and ``load`` in each actor).
    """

    upstream = ("probe",)
    reads = ("video_id", "frames")
    uses_model = True
    Config: ClassVar[type[FrameModelConfig]] = FrameModelConfig
    column: ClassVar[str]  # the list<binary> column of encoded frames
    model_column: ClassVar[str]  # the column recording the model spec
    load_options: ClassVar[tuple[str, ...]] = ()
    config: FrameModelConfig

    # -- what a frame stage implements -----------------------------------------------------------
    def infer(self, frames: list[Frame], video_ids: list[str]) -> list[torch.Tensor]:
        """One CPU tensor per frame, in order; ``video_ids[frame.row]`` is the frame's video."""
        raise NotImplementedError

    def encode(self, output: torch.Tensor) -> bytes:
        """One frame's output as the bytes stored in ``column``."""
        raise NotImplementedError

    def row_columns(self) -> dict[str, Any]:
        """The columns every ok row carries beside the images (by default the model's spec)."""
        return {self.model_column: self.config.model}

    # -- the shared journey ----------------------------------------------------------------------
    def options(self) -> dict[str, Any]:
        return {k: getattr(self.config, k) for k in self.load_options}

    def models(self) -> dict[str, str]:
        return {self.name: self.config.model}

    def check(self) -> None:
        # On the driver: a missing, truncated or foreign checkpoint fails here, before any actor starts
        # and before --force deletes the stage's earlier output.
        c = self.config
        if c.check_on_driver:
            backends.check(self.name, c.model, device=c.device, precision=c.precision, **self.options())

    def setup(self) -> None:
        c = self.config
        self.net = backends.load(self.name, c.model, c.device, c.precision, **self.options())
        self.runner = BatchRunner(c.model_batch, self.net.device, what=f"{self.name} model")
        self.encoder = c.encoder_pool()
        log.info("%s: %s on %s, autocast %s", self.name, c.model, self.net.device, self.net.dtype)

    def process(self, batch: pa.Table) -> pa.Table:
        ids = batch["video_id"].to_pylist()
        results = map_frames(
            batch["frames"].to_pylist(), lambda f: self.infer(f, ids), self.runner, self.config.gpu_decode
        )
        # Every row's frames go to the encoder threads before any row's images are collected.
        encoded = {
            i: self.encoder.map(self.encode, res)
            for i, res in enumerate(results)
            if not isinstance(res, ItemError)
        }
        out = Results(self, ids)
        for i, res in enumerate(results):
            if isinstance(res, ItemError):
                out.fail(i, f"{self.name}: {res.reason}")
            else:
                out.set(i, **{self.column: list(encoded[i])}, **self.row_columns())
        return out.table()
