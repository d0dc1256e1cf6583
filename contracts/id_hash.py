"""A stable 64-bit hash of each ``video_id``: FNV-1a over its UTF-8 bytes, vectorised over Arrow arrays.

Stable across processes and runs, unlike Python's ``hash``, so that what a worker hashes and what the
driver hashes agree. Used for the resume filter (``pipeline.done_ids``) and for the stage end's duplicate
check (``contracts.stage_end``): distinct hashes are distinct ids, so only rows whose hash is seen twice
need their ids compared.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)


def one_array(ids: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(ids, pa.ChunkedArray):
        return ids.combine_chunks() if ids.num_chunks != 1 else ids.chunk(0)
    return ids


def flat(ids: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """The offsets (int64, ``len + 1``) and UTF-8 bytes of a string array, without copying the bytes."""
    ids = one_array(ids)
    ids = pc.fill_null(ids, "") if ids.null_count else ids
    ids = ids.cast(pa.large_string())
    _, offsets_buf, data_buf = ids.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64)[ids.offset : ids.offset + len(ids) + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return offsets, data


def _fnv1a(offsets: np.ndarray, data: np.ndarray, bits: int) -> np.ndarray:
    """FNV-1a 64 of each id, vectorised over the ids (one pass per byte position)."""
    starts, lengths = offsets[:-1], np.diff(offsets)
    h = np.full(len(lengths), FNV_OFFSET, np.uint64)
    active = np.flatnonzero(lengths > 0)
    pos = 0
    while len(active):
        h[active] = (h[active] ^ data[starts[active] + pos].astype(np.uint64)) * FNV_PRIME
        pos += 1
        active = active[lengths[active] > pos]
    return h & np.uint64((1 << bits) - 1) if bits < 64 else h


def id_hashes(ids: pa.Array | pa.ChunkedArray, bits: int = 64, chunk: int = 1 << 20) -> np.ndarray:
    """The hash of each id, ``chunk`` ids at a time (the per-byte passes' scratch stays a million ids'
    worth on a driver hashing ten million). ``bits`` below 64 exists so that tests can force collisions."""
    ids = one_array(ids)
    out = np.empty(len(ids), np.uint64)
    for i in range(0, len(ids), chunk):
        offsets, data = flat(ids.slice(i, chunk))
        out[i : i + chunk] = _fnv1a(offsets, data, bits)
    return out
