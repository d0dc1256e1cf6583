"""Batched frame inference: order across videos, out-of-memory halving, bad frames, decoding, precision."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from contracts.backends import resolve_device, resolve_dtype
from stages.backends.batching import (
    BatchRunner,
    Frame,
    ItemError,
    decode_frames,
    decode_image_tensor,
    flatten,
    map_frames,
    regroup,
)
from stages.frame_stage import FrameModelConfig

CPU = torch.device("cpu")


def encode(array: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def flat(h: int, w: int, value: int) -> bytes:
    """A lossless frame of one grey level, so a decoded frame tells which it was."""
    return encode(np.full((h, w, 3), value, np.uint8), "PNG")


class MemoryLimitedNet(torch.nn.Module):
    """A real conv net that raises CUDA-style out-of-memory above a number of pixels per batch."""

    def __init__(self, max_pixels: int):
        super().__init__()
        self.max_pixels = max_pixels
        self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        if x.shape[0] * x.shape[2] * x.shape[3] > self.max_pixels:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.numel() * 4} bytes")
        return self.conv(x)


def test_runner_keeps_item_order_across_shape_buckets():
    items = [torch.full((1, 2 + i % 3, 4), float(i)) for i in range(23)]  # three shapes, interleaved
    runner = BatchRunner(4)
    out = runner.run(items, lambda b: [t.mean() * 10 for t in torch.stack(b)], key=lambda t: tuple(t.shape))
    assert [float(x) for x in out] == [i * 10.0 for i in range(23)]
    # 8 + 8 + 7 items in the buckets, at most 4 per call
    assert runner.calls == 2 + 2 + 2


def test_out_of_memory_batches_are_halved_and_the_size_remembered():
    net = MemoryLimitedNet(max_pixels=5 * 16 * 16)  # fits 5 frames of 16x16
    runner = BatchRunner(16)
    items = [torch.rand(3, 16, 16) for _ in range(16)]
    out = runner.run(
        items, lambda b: list(net(torch.stack(b))[:, 0].mean((1, 2))), key=lambda t: tuple(t.shape)
    )
    assert all(not isinstance(x, ItemError) for x in out)
    expected = net.conv(torch.stack(items))[:, 0].mean((1, 2))
    assert torch.allclose(torch.stack(out), expected, atol=1e-6)
    assert net.batch_sizes[:3] == [16, 8, 4]  # 16 and 8 fail, 4 fits
    assert runner.caps[(3, 16, 16)] == 4 and runner.oom_splits == 2
    net.batch_sizes.clear()
    runner.run(items, lambda b: list(net(torch.stack(b))[:, 0].mean((1, 2))), key=lambda t: tuple(t.shape))
    assert net.batch_sizes == [4, 4, 4, 4]  # the next call starts at the size that fitted


def test_items_that_do_not_fit_even_alone_fail_and_the_rest_succeed():
    net = MemoryLimitedNet(max_pixels=2 * 32 * 32)
    sizes = [16, 16, 64, 16, 64, 16]  # 64x64 never fits
    items = [torch.rand(3, s, s) for s in sizes]
    out = BatchRunner(8).run(
        items, lambda b: list(net(torch.stack(b))[:, 0].mean((1, 2))), key=lambda t: tuple(t.shape)
    )
    failed = [i for i, x in enumerate(out) if isinstance(x, ItemError)]
    assert failed == [2, 4]
    assert "out of memory even at batch size 1" in out[2].reason


def test_a_batch_error_is_isolated_to_the_item_that_causes_it():
    def fn(batch: list[int]) -> list[int]:
        if 13 in batch:
            raise ValueError("cannot handle 13")
        return [x * 2 for x in batch]

    out = BatchRunner(8).run(list(range(20)), fn)
    assert [x for x in out if not isinstance(x, ItemError)] == [x * 2 for x in range(20) if x != 13]
    assert isinstance(out[13], ItemError) and "cannot handle 13" in out[13].reason


def test_decode_handles_unusual_frames():
    rgba = np.zeros((5, 7, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    cases = {
        "rgb": (encode(np.full((9, 13, 3), 100, np.uint8)), (9, 13)),
        "grey jpeg": (encode(np.full((6, 11), 80, np.uint8)), (6, 11)),
        "rgba png": (encode(rgba, "PNG"), (5, 7)),
        "1x1": (encode(np.zeros((1, 1, 3), np.uint8), "PNG"), (1, 1)),
        "bmp": (encode(np.full((4, 3, 3), 7, np.uint8), "BMP"), (4, 3)),
    }
    for name, (data, (h, w)) in cases.items():
        img = decode_image_tensor(data)
        assert img.dtype == torch.uint8 and tuple(img.shape) == (3, h, w), name
    grey = decode_image_tensor(cases["grey jpeg"][0])
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert decode_image_tensor(cases["rgba png"][0])[0].eq(200).all()  # alpha dropped, colour kept
    out = decode_frames([cases["rgb"][0], b"\xff\xd8 not really", b""], CPU)
    assert isinstance(out[0], torch.Tensor)
    assert isinstance(out[1], ItemError) and "not a decodable image" in out[1].reason
    assert isinstance(out[2], ItemError) and "empty" in out[2].reason


def test_map_frames_regroups_rows_in_order_across_batches():
    # rows of different frame sizes and counts; batches of 3 frames mix rows
    rows = [[flat(8, 10, 10 * r + j) for j in range(n)] for r, n in enumerate([8, 3, 5, 8])]
    rows[1] = [flat(12, 6, 10 + j) for j in range(3)]  # another shape
    seen: list[list[tuple[int, int]]] = []

    def fn(frames: list[Frame]) -> list[tuple[int, int, int]]:
        seen.append([(f.row, f.index) for f in frames])
        return [(f.row, f.index, int(f.image[0, 0, 0])) for f in frames]

    out = map_frames(rows, fn, BatchRunner(3))
    for r, res in enumerate(out):
        assert [x[:2] for x in res] == [(r, j) for j in range(len(rows[r]))]
        assert [x[2] for x in res] == [10 * r + j for j in range(len(rows[r]))]
    assert max(len(b) for b in seen) == 3 and any(len({r for r, _ in b}) > 1 for b in seen)


def test_map_frames_fails_only_rows_with_bad_frames():
    rows = [[flat(8, 8, 1)] * 3, [flat(8, 8, 2), b"junk"], None, [flat(8, 8, 3)] * 2]
    calls: list[int] = []

    def fn(frames: list[Frame]) -> list[int]:
        calls.append(len(frames))
        return [f.row for f in frames]

    out = map_frames(rows, fn, BatchRunner(8))
    assert out[0] == [0, 0, 0] and out[3] == [3, 3]
    assert isinstance(out[1], ItemError) and out[1].reason.startswith("frame 1: not a decodable image")
    assert isinstance(out[2], ItemError) and "no frames" in out[2].reason
    assert calls == [5]  # the bad row's good frame is not run


def test_precision_choice():
    assert resolve_dtype(CPU, "auto") is None and resolve_dtype(CPU, "fp32") is None
    assert resolve_dtype(CPU, "bf16") is torch.bfloat16 and resolve_dtype(CPU, "fp16") is torch.float16
    with pytest.raises(ValueError, match="precision"):
        resolve_dtype(CPU, "int8")
    with pytest.raises(ValueError, match="expected one of"):
        FrameModelConfig(precision="half")
    config = FrameModelConfig(device="cpu")
    assert resolve_device(config.device) == CPU and resolve_dtype(CPU, config.precision) is None


def test_flatten_and_regroup_are_inverse():
    rows = [["a", "b"], None, [], ["c"], ["d", "e", "f"]]
    items, owners = flatten(rows)
    assert items == list("abcdef")
    back = regroup([x.upper() for x in items], owners, len(rows))
    assert back == [["A", "B"], [], [], ["C"], ["D", "E", "F"]]


def test_results_a_failed_row_carries_no_partial_columns():
    from stages.base import Results
    from stages.caption import CaptionStage

    out = Results(CaptionStage, ["a", "b", "c"])
    out.set(0, ofa=["x"] * 8, mplug="m", caption_model="ofa=t;mplug=t")
    out.set(1, ofa=["y"] * 8)
    out.fail(1, "video captioning failed: boom\nsecond line")
    out.fail(1, "a later reason")  # the first reason stays
    out.set(1, mplug="set after the failure")
    out.filter(2, "below the threshold")
    rows = out.table().to_pylist()
    assert rows[0] == {
        "video_id": "a",
        "status": "ok",
        "error": None,
        "ofa": ["x"] * 8,
        "mplug": "m",
        "caption_model": "ofa=t;mplug=t",
        "caption_prompt_version": None,
    }
    assert rows[1]["status"] == "failed" and rows[1]["error"] == "video captioning failed: boom second line"
    assert rows[1]["ofa"] is None and rows[1]["mplug"] is None  # set, then failed: null
    assert rows[2]["status"] == "filtered" and rows[2]["error"] == "below the threshold"
    assert out.table().schema == CaptionStage.output_schema()
    with pytest.raises(KeyError, match="not output columns of this stage: status"):
        out.set(0, status="ok")


def test_results_keeps_the_accounting_columns_of_a_failed_row():
    from stages.base import Results
    from stages.enhance import USAGE, EnhanceStage

    out = Results(EnhanceStage, ["a"], accounting=USAGE)
    out.set(0, polish_mplug="half done", enhance_prompt_tokens=120, enhance_requests=2)
    out.fail(0, "HTTP 500")
    row = out.table().to_pylist()[0]
    assert (
        row["polish_mplug"] is None and row["enhance_prompt_tokens"] == 120 and row["enhance_requests"] == 2
    )
