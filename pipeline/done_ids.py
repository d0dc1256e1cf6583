"""The ids a stage has already written, in a form every worker can filter against without a private copy.

A resumed stage drops each upstream row whose ``video_id`` is done. A Python ``frozenset`` of the done
ids cost 134 MiB per million ids in every worker process (issue 19); at VIDAL-10M's ten million that is
about 1.3 GB per worker. ``DoneIds`` instead holds three flat numpy arrays:

- ``hashes``: a 64-bit FNV-1a hash of each id's UTF-8 bytes, sorted (8 bytes per id);
- ``offsets`` / ``data``: the ids themselves, in the same order, as one byte buffer and its offsets.

The driver builds it once and puts it in the object store; ``ray.get`` in a worker maps the arrays
zero-copy from the node's shared memory, so a node holds one copy whatever its number of workers.
A batch is filtered with one ``searchsorted`` on the hashes; every hash hit is confirmed by comparing
the actual id bytes, so a collision (a new id with a done id's hash, or two done ids sharing one) can
never drop a row that is not done. ``bits`` below 64 exists so that tests can force collisions.

That is about 35 bytes per id (a 19-character ``youtube-…`` id, its offset, its hash): 350 MB per node at
10M done ids. When the driver knows the upstream's ids (every stage but the source stage, discover), the
workers get ``PendingIds`` instead: only the 64-bit hashes of the ids still to do, 8 bytes each, at most
80 MB per node at 10M (a fresh run; a resume ships fewer). A row is kept when its hash is pending. That
filter errs only one way: a done id sharing a pending id's hash (about one pair in 2^64 / (done x
pending)) is redone, never lost, and the duplicate row it writes is removed at the stage end
(``contracts.stage_end``); a pending id is always kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contracts.id_hash import flat, id_hashes, one_array

__all__ = ["DoneIds", "PendingIds", "id_hashes"]


@dataclass(frozen=True)
class DoneIds:
    """Sorted id hashes plus the ids in the same order; ``pending`` keeps the ids that are not done."""

    hashes: np.ndarray  # uint64, sorted
    offsets: np.ndarray  # int64, len + 1, into data
    data: np.ndarray  # uint8, the ids' UTF-8 bytes
    bits: int = 64

    @classmethod
    def build(cls, ids: pa.Array | pa.ChunkedArray, bits: int = 64) -> DoneIds:
        hashes = id_hashes(ids, bits)
        order = np.argsort(hashes, kind="stable")
        hashes = hashes[order]
        offsets, data = flat(one_array(ids).take(pa.array(order)))
        del order
        start, end = (int(offsets[0]), int(offsets[-1])) if len(offsets) else (0, 0)
        if start or end != len(data):  # a view into a larger buffer: keep this array's bytes only
            offsets, data = offsets - start, data[start:end].copy()
        return cls(hashes, offsets, data, bits)

    def __len__(self) -> int:
        return len(self.hashes)

    @property
    def nbytes(self) -> int:
        return self.hashes.nbytes + self.offsets.nbytes + self.data.nbytes

    def _ids_at(self, positions: np.ndarray) -> pa.Array:
        done = pa.LargeStringArray.from_buffers(
            len(self.hashes), pa.py_buffer(self.offsets), pa.py_buffer(self.data)
        )
        return done.take(pa.array(positions, pa.int64()))

    def is_done(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """A boolean mask: True where the id is among the done ids (exact, whatever the hashes)."""
        ids = one_array(ids)
        n = len(self.hashes)
        if n == 0 or len(ids) == 0:
            return np.zeros(len(ids), bool)
        h = id_hashes(ids, self.bits)
        pos = np.searchsorted(self.hashes, h, side="left")
        hit = np.flatnonzero(self.hashes[np.minimum(pos, n - 1)] == h)
        done = np.zeros(len(ids), bool)
        if not len(hit):
            return done
        queried = ids.take(pa.array(hit)).cast(pa.large_string())
        done[hit] = pc.fill_null(pc.equal(queried, self._ids_at(pos[hit])), False).to_numpy(
            zero_copy_only=False
        )
        # A hash hit whose first candidate differs may match a later done id with the same hash.
        for i in hit[~done[hit]]:
            j, want = int(pos[i]) + 1, ids[int(i)].as_py()
            while j < n and self.hashes[j] == h[i] and not done[i]:
                done[i] = self._ids_at(np.array([j]))[0].as_py() == want
                j += 1
        return done

    def pending(self, ids: pa.Array | pa.ChunkedArray, chunk: int = 1 << 20) -> pa.Array:
        """The ids that are not done, in their order (``chunk`` at a time, so that the driver's scratch
        arrays stay at a million ids' worth whatever the run's size)."""
        ids = one_array(ids)
        kept = [
            ids.slice(i, chunk).filter(pa.array(~self.is_done(ids.slice(i, chunk))))
            for i in range(0, len(ids), chunk)
        ]
        return pa.concat_arrays(kept) if kept else ids

    def drop_done(self, batch: pa.Table) -> pa.Table:
        """The rows of ``batch`` whose ``video_id`` is not done."""
        if not len(self.hashes):
            return batch
        return batch.filter(pa.array(~self.is_done(batch["video_id"])))


@dataclass(frozen=True)
class PendingIds:
    """The sorted, distinct hashes of the ids still to do; ``keep_pending`` keeps the rows whose id hash is
    among them (every pending row; a done row only on a hash collision, see the module docstring)."""

    hashes: np.ndarray  # uint64, sorted, distinct
    bits: int = 64

    @classmethod
    def build(cls, ids: pa.Array | pa.ChunkedArray, bits: int = 64) -> PendingIds:
        return cls(np.unique(id_hashes(ids, bits)), bits)

    def __len__(self) -> int:
        return len(self.hashes)

    @property
    def nbytes(self) -> int:
        return self.hashes.nbytes

    def is_pending(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        h = id_hashes(ids, self.bits)
        if not len(self.hashes) or not len(h):
            return np.zeros(len(h), bool)
        pos = np.minimum(np.searchsorted(self.hashes, h), len(self.hashes) - 1)
        return self.hashes[pos] == h

    def keep_pending(self, batch: pa.Table) -> pa.Table:
        """The rows of ``batch`` whose ``video_id`` is pending."""
        return batch.filter(pa.array(self.is_pending(batch["video_id"])))
