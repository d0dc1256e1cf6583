"""Batched inference over the frames of many videos, shared by the model stages.

A stage's ``process`` gets a few videos with several frames each; models want larger, same-shaped
batches. ``map_frames`` decodes the frames of all rows (on the GPU when it can), runs a model function
over them in batches of at most ``max_batch`` same-shaped frames, and gives each row its results in
frame order::

    runner = BatchRunner(max_batch=32, device=device, what="depth model")
    per_row = map_frames([row["frames"] for row in rows], predict, runner)   # list of results | ItemError

A batch that fails is split in halves and retried, down to single frames, so one bad frame (or a CUDA
out-of-memory on a large batch) fails only the rows whose frames still fail alone. After an
out-of-memory error the runner remembers the smaller size for that shape. ``flatten`` / ``regroup`` do
the same bookkeeping for items that are not frames. Also here: ``autocast`` for the dtype the
registry resolved (``contracts.backends.resolve_dtype``).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

from contracts.encodings import decode_rgb

log = logging.getLogger("vidal")
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ItemError:
    """The result of an item that failed: a one-line reason, kept in the item's place."""

    reason: str


# -- precision and device ----------------------------------------------------------------------------
def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for the device and dtype, or nothing when running in fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def is_oom(error: BaseException) -> bool:
    """True for a device out-of-memory error (``torch.OutOfMemoryError`` or a CUDA/cuDNN OOM message)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def free_device_memory(device: torch.device) -> None:
    """Return cached blocks to the driver after an OOM, so the retry starts from a clean cache."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


# -- decoding ----------------------------------------------------------------------------------------
def decode_image_tensor(data: bytes) -> torch.Tensor:
    """An encoded image as a uint8 RGB tensor (3, H, W) on the CPU (``contracts.encodings.decode_rgb``).

    Grayscale is replicated to three channels and alpha is dropped. Raises ``ValueError`` in words
    when the bytes are not an image.
    """
    return torch.from_numpy(decode_rgb(data).copy()).permute(2, 0, 1).contiguous()


def decode_frames(blobs: Sequence[bytes], device: torch.device, gpu_decode: bool = True) -> list[Any]:
    """Decode frames to uint8 RGB (3, H, W) tensors on ``device``; a frame that fails becomes an ``ItemError``.

    On CUDA, JPEGs are decoded in one batched nvJPEG call when ``gpu_decode``; anything it rejects is
    decoded on the CPU one by one, so a bad frame only fails itself.
    """
    out: list[Any] = [None] * len(blobs)
    todo = list(range(len(blobs)))
    if device.type == "cuda" and gpu_decode:
        jpegs = [i for i in todo if blobs[i][:2] == b"\xff\xd8"]
        if jpegs:
            from torchvision.io import ImageReadMode, decode_jpeg

            try:
                data = [torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in jpegs]
                with warnings.catch_warnings():  # torchvision 0.29 announces a move to TorchCodec
                    warnings.simplefilter("ignore", DeprecationWarning)
                    decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
                for i, t in zip(jpegs, decoded):
                    out[i] = t
                todo = [i for i in todo if out[i] is None]
            except RuntimeError as e:
                log.debug("batched GPU JPEG decode failed (%s); decoding on the CPU", e)
    for i in todo:
        try:
            out[i] = decode_image_tensor(blobs[i]).to(device, non_blocking=True)
        except ValueError as e:
            out[i] = ItemError(str(e))
    return out


# -- rows <-> items ----------------------------------------------------------------------------------
def flatten(rows: Sequence[Sequence[T] | None]) -> tuple[list[T], list[tuple[int, int]]]:
    """All items of all rows in one list, and for each item its ``(row, position)``."""
    items: list[T] = []
    owners: list[tuple[int, int]] = []
    for r, row in enumerate(rows):
        for j, item in enumerate(row or []):
            items.append(item)
            owners.append((r, j))
    return items, owners


def regroup(results: Sequence[R], owners: Sequence[tuple[int, int]], n_rows: int) -> list[list[R]]:
    """The inverse of ``flatten``: results back into per-row lists, in their original positions."""
    rows: list[list[Any]] = [[] for _ in range(n_rows)]
    for (r, j), res in zip(owners, results):
        row = rows[r]
        row.extend([None] * (j + 1 - len(row)))
        row[j] = res
    return rows


# -- the runner --------------------------------------------------------------------------------------
class BatchRunner(Generic[T, R]):
    """Runs ``fn(list_of_items) -> list_of_results`` over items in same-key batches of at most ``max_batch``.

    A batch that raises is split in halves and retried; an item that still fails alone gets an
    ``ItemError``. Out-of-memory errors also lower that key's batch size for later calls (the cap),
    so a bucket that does not fit at ``max_batch`` stops retrying the big size every time.
    """

    def __init__(self, max_batch: int, device: torch.device | None = None, what: str = "batch"):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = max_batch
        self.device = device or torch.device("cpu")
        self.what = what
        self.caps: dict[Hashable, int] = {}  # key -> largest batch known to fit after an OOM
        self.calls = 0  # fn calls (the benchmark and tests read it)
        self.oom_splits = 0

    def run(
        self,
        items: Sequence[T],
        fn: Callable[[list[T]], Sequence[R]],
        key: Callable[[T], Hashable] | None = None,
    ) -> list[R | ItemError]:
        """Results in the order of ``items``; items whose key function raises are failed too."""
        results: list[Any] = [None] * len(items)
        buckets: dict[Hashable, list[int]] = {}
        for i, item in enumerate(items):
            buckets.setdefault(key(item) if key else None, []).append(i)
        for k, idx in buckets.items():
            for chunk in self._chunks(idx, self.caps.get(k, self.max_batch)):
                self._run_chunk(k, chunk, items, fn, results)
        return results

    @staticmethod
    def _chunks(idx: list[int], size: int) -> Iterator[list[int]]:
        for s in range(0, len(idx), size):
            yield idx[s : s + size]

    def _run_chunk(
        self,
        k: Hashable,
        chunk: list[int],
        items: Sequence[T],
        fn: Callable[[list[T]], Sequence[R]],
        results: list[Any],
    ) -> None:
        try:
            self.calls += 1
            out = fn([items[i] for i in chunk])
            if len(out) != len(chunk):
                raise RuntimeError(f"{self.what} function returned {len(out)} results for {len(chunk)} items")
        except Exception as e:  # any failure is split and retried, then becomes data
            oom = is_oom(e)
            if oom:
                free_device_memory(self.device)
            if len(chunk) == 1:
                what = "out of memory even at batch size 1" if oom else f"{type(e).__name__}: {e}"
                results[chunk[0]] = ItemError(" ".join(f"{self.what} failed: {what}".split())[:400])
                return
            half = (len(chunk) + 1) // 2
            if not oom:  # bisect to find the item that fails
                self._run_chunk(k, chunk[:half], items, fn, results)
                self._run_chunk(k, chunk[half:], items, fn, results)
                return
            self.oom_splits += 1
            if half < self.caps.get(k, self.max_batch):
                self.caps[k] = half
                log.warning(
                    "%s: out of memory at batch size %d for %s; continuing at %d",
                    self.what,
                    len(chunk),
                    k,
                    half,
                )
            pos = 0
            while pos < len(chunk):  # the rest at the size that is known to fit, as it shrinks
                size = min(self.caps.get(k, self.max_batch), half)
                self._run_chunk(k, chunk[pos : pos + size], items, fn, results)
                pos += size
            return
        for i, res in zip(chunk, out):
            results[i] = res


# -- the whole journey for frame columns -------------------------------------------------------------
@dataclass
class Frame:
    """One decoded frame handed to a model function: its row, its index in the row, the image."""

    row: int
    index: int
    image: torch.Tensor  # uint8 (3, H, W) on the model's device


def map_frames(
    frames_per_row: Sequence[Sequence[bytes] | None],
    fn: Callable[[list[Frame]], Sequence[R]],
    runner: BatchRunner,
    gpu_decode: bool = True,
) -> list[list[R] | ItemError]:
    """Decode every row's frames, run ``fn`` over same-shaped batches of them, and regroup per row.

    A row gets its results in frame order, or an ``ItemError`` naming its first bad frame (one that
    does not decode, or fails in ``fn`` even alone); a row without frames fails too. Rows with a frame
    that does not decode are left out of inference.
    """
    out: list[Any] = [None] * len(frames_per_row)
    items: list[Frame] = []
    for r, blobs in enumerate(frames_per_row):
        if not blobs:
            out[r] = ItemError("no frames to process")
            continue
        decoded = decode_frames(blobs, runner.device, gpu_decode)
        bad = next(((j, d) for j, d in enumerate(decoded) if isinstance(d, ItemError)), None)
        if bad:
            out[r] = ItemError(f"frame {bad[0]}: {bad[1].reason}")
            continue
        items += [Frame(r, j, img) for j, img in enumerate(decoded)]
    results = runner.run(items, fn, key=lambda f: tuple(f.image.shape))
    per_row = regroup(results, [(f.row, f.index) for f in items], len(frames_per_row))
    for r, res in enumerate(per_row):
        if out[r] is None:
            bad = next(((j, x) for j, x in enumerate(res) if isinstance(x, ItemError)), None)
            out[r] = ItemError(f"frame {bad[0]}: {bad[1].reason}") if bad else res
    return out
