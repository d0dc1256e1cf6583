"""The CUDA paths of the vision stages: nvJPEG decode, processor and model on the GPU under bf16 autocast,
and CUDA out-of-memory recovery. Skipped without a CUDA device (run them in the GPU check)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from pipeline.config import load_config
from stages.backends.batching import BatchRunner, ItemError, decode_frames
from stages.base import RunContext
from stages.depth import DepthStage
from stages.infrared import InfraredStage

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def jpeg(h: int, w: int, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
        buf, format="JPEG"
    )
    return buf.getvalue()


def run(stage, frames: dict[str, list[bytes]]) -> dict[str, dict]:
    table = pa.table({"video_id": list(frames), "frames": list(frames.values())})
    return {r["video_id"]: r for r in stage.process(table).to_pylist()}


def test_gpu_jpeg_decode_matches_the_cpu():
    blobs = [jpeg(64, 96, i) for i in range(4)] + [b"not a jpeg"]
    gpu = decode_frames(blobs, torch.device("cuda"))
    cpu = decode_frames(blobs, torch.device("cpu"))
    for g, c in zip(gpu[:4], cpu[:4]):
        assert g.device.type == "cuda" and g.shape == c.shape
        assert (g.cpu().int() - c.int()).abs().float().mean() < 3  # decoders may round differently
    assert isinstance(gpu[4], ItemError)


@pytest.mark.parametrize(
    "stage_name, model",
    [
        ("depth", "tiny"),
        ("depth", "tiny:depth_anything"),
        ("infrared", "tiny"),
        ("infrared", "tiny:cyclegan"),
    ],
)
def test_stages_run_on_cuda_in_bf16_and_match_the_cpu_roughly(stage_name, model):
    cls = {"depth": DepthStage, "infrared": InfraredStage}[stage_name]
    frames = {"v": [jpeg(72, 128, i) for i in range(8)], "w": [jpeg(33, 61, 9)]}
    outs = {}
    for device in ("cuda", "cpu"):
        cfg = load_config(None, [f"{stage_name}.model={model}", f"{stage_name}.device={device}"])
        stage = cls(getattr(cfg, stage_name), RunContext(root="/tmp/unused"))
        stage.setup()
        outs[device] = run(stage, frames)
        if device == "cuda":
            assert stage.runner.device.type == "cuda" and stage.net.dtype in (torch.bfloat16, torch.float16)
    column = "depth" if stage_name == "depth" else "ir"
    for vid in frames:
        assert outs["cuda"][vid]["status"] == "ok"
        for a, b in zip(outs["cuda"][vid][column], outs["cpu"][vid][column]):
            x, y = np.asarray(Image.open(io.BytesIO(a))), np.asarray(Image.open(io.BytesIO(b)))
            assert x.shape == y.shape and x.dtype == y.dtype


def test_real_cuda_out_of_memory_is_recovered():
    device = torch.device("cuda")
    free, _ = torch.cuda.mem_get_info(device)
    per_item = free // 6  # a batch of 8 cannot fit, a batch of 4 can

    def allocate(batch: list[int]) -> list[int]:
        block = torch.empty(per_item * len(batch), dtype=torch.uint8, device=device)
        del block
        return batch

    runner = BatchRunner(8, device)
    out = runner.run(list(range(16)), allocate)
    assert out == list(range(16)) and runner.oom_splits >= 1 and runner.caps[None] <= 4
