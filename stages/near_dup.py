"""Near-duplicate clips across a whole run: random-hyperplane LSH buckets through Ray, each bucket compared exactly.

Every clip embedding (unit length) gets ``tables`` keys of ``bits`` sign bits each, from hyperplanes drawn
from a fixed seed. Two clips at cosine ``c`` share one table's key with probability
``p(c) ** bits``, ``p(c) = 1 - arccos(c) / pi``, so they meet in at least one table with probability
``1 - (1 - p(c) ** bits) ** tables`` (``recall_at``). Inside a bucket every pair is compared exactly, so
nothing is reported above the threshold that is not above it; what LSH can cost is recall.

The defaults are sized to the run (``auto_lsh``, ``score.dedup_tables`` / ``dedup_bits: auto``):

- **bits** = ``ceil(log2(rows)) - 3``, at least 8. Two unrelated clips (cosine ~0) share a key with
  probability ``2 ** -bits``, so a row meets ``rows * 2 ** -bits`` = 4-8 chance neighbours per table:
  buckets stay small whatever the size of the run, and comparing a row with them (4-8 dot products)
  costs about what moving the row through the round's shuffle costs; more bits would shrink the
  buckets further but need more tables, each a full pass over the embeddings.
- **tables** = the fewest with ``recall_at(threshold) >= RECALL`` (0.98):
  ``ceil(ln(1 - 0.98) / ln(1 - p(threshold) ** bits))``.

At the default threshold 0.95 (``p`` = 0.899): 1k rows 8 x 8 (recall 0.988), 100k 16 x 14 (0.983),
1M 22 x 17 (0.980), 10M 35 x 21 (0.981); chance pairs compared in all, ``tables * rows ** 2 / 2 **
(bits + 1)``: 4.9 M at 100k, 84 M at 1M. At the frame signature's 0.92 (``p`` = 0.872) it takes about
half as many tables again (100k: 25 x 14, 1M: 39 x 17).
(The former fixed 16 x 16 gave 0.96 at 0.95 whatever the size, with 2**-16 chance pairs per table,
which at 1M rows is 7.6 M per table.) Explicit integers are used as given. The recall assumes
unrelated embeddings near-orthogonal; a model whose embeddings share a common direction puts more
unrelated pairs in each bucket (more work, the same recall). Measured (``bench/bench_score.py``):
1M 768-d rows in 108 s on 2 CPUs with the auto 22 x 17 (0.9985 of planted copies found), 100k in 3.7-6.5 s
with 16 x 14, on the quiet machine (bench/RESULTS.md).

Memory: tables are processed in rounds of ``tables_per_round``. In a round each part of the input is
read by one task, which sends each row (its float16 embedding) to the partition its key hashes to; one
task per partition compares its buckets and returns only the pairs above the threshold. So the cluster
holds at most ``tables_per_round`` copies of the embeddings at once (in Ray's object store, which
spills to disk), one task holds one partition, and the driver holds only the pairs found.

Which clip of a group stays does not depend on the input's order or its part boundaries: the edges
found depend on the embeddings alone, and ``choose_kept`` walks the clips from the longest (then the
smallest ``video_id``): a clip is dropped when it is above the threshold with one already kept, and
names the most similar kept one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

SMALL_BUCKET = 64  # buckets up to this size: stacked Gram matrices, one numpy call per size; larger: blocks
BLOCK = 2048  # rows per matrix-product block in a large bucket
CHUNK_ROWS = 16384  # rows of small buckets gathered at once (float32: 48 MB at 768 dimensions)

# A part of the input: called in a Ray task, returns (global row numbers int64 [n], embeddings float16 [n, d]).
PartReader = Callable[[], tuple[np.ndarray, np.ndarray]]


RECALL = 0.98  # auto_lsh's bar: the probability that a pair at the threshold shares a bucket
AUTO = "auto"


@dataclass(frozen=True)
class LshParams:
    threshold: float = 0.95
    tables: int = 16
    bits: int = 16
    tables_per_round: int = 4
    rows_per_partition: int = 200_000
    seed: int = 0


def recall_at(cosine: float, tables: int, bits: int) -> float:
    """Probability that two unit vectors at ``cosine`` share a key in at least one of the tables."""
    p = 1.0 - math.acos(max(-1.0, min(1.0, cosine))) / math.pi
    return 1.0 - (1.0 - p**bits) ** tables


def auto_lsh(
    rows: int, threshold: float, tables: int | str = AUTO, bits: int | str = AUTO
) -> tuple[int, int]:
    """``(tables, bits)`` for a pass over ``rows`` embeddings: ``"auto"`` ones sized as the module says,
    integers kept. Auto tables meet ``RECALL`` at ``threshold`` (up to 255 tables, where it cannot)."""
    if bits == AUTO:
        bits = min(56, max(8, math.ceil(math.log2(max(rows, 2))) - 3))
    if tables == AUTO:
        p = 1.0 - math.acos(max(-1.0, min(1.0, threshold))) / math.pi
        miss = 1.0 - p ** int(bits)
        tables = 1 if miss <= 0 else math.ceil(math.log(1.0 - RECALL) / math.log(miss) - 1e-9)
        tables = min(255, max(1, tables))
    return int(tables), int(bits)


def hyperplanes(dim: int, params: LshParams) -> np.ndarray:
    """``[tables, bits, dim]`` float32 normals, the same for every task of a run (from ``params.seed``)."""
    rng = np.random.default_rng(params.seed)
    return rng.standard_normal((params.tables, params.bits, dim), dtype=np.float32)


def table_keys(emb: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """``[n, tables]`` uint64 keys: one sign bit per hyperplane, packed (one matrix product for all tables)."""
    tables, bits, dim = planes.shape
    signs = (emb.astype(np.float32, copy=False) @ planes.reshape(-1, dim).T > 0).reshape(
        len(emb), tables, bits
    )
    packed = np.packbits(signs, axis=2, bitorder="little")  # [n, tables, ceil(bits / 8)] bytes
    padded = np.zeros((len(emb), tables, 8), dtype=np.uint8)
    padded[:, :, : packed.shape[2]] = packed
    return padded.view("<u8")[:, :, 0].astype(np.uint64)


def decode_embeddings(blobs: list[bytes]) -> np.ndarray:
    """``[n, d]`` float16 from float16 little-endian bytes, one blob per row."""
    return np.frombuffer(b"".join(blobs), dtype="<f2").reshape(len(blobs), -1)


def read_part_embeddings(
    uri: str, column: str, rows: np.ndarray, first: int
) -> tuple[np.ndarray, np.ndarray]:
    """A ``PartReader`` over a manifest part: the embeddings of some of its rows (numbers within the part),
    with their global numbers (``first`` + row); rows without one (null) are left out. Light on purpose:
    Ray workers import only numpy and pyarrow."""
    import pyarrow as pa

    from contracts import manifest

    blobs = manifest.read_part(uri, [column])[column].take(pa.array(rows)).to_pylist()
    present = np.array([b is not None for b in blobs], dtype=bool)
    kept = [b for b in blobs if b is not None]
    if not kept:
        return np.empty(0, dtype=np.int64), np.empty((0, 1), dtype="<f2")
    return rows[present].astype(np.int64) + first, decode_embeddings(kept)


def _same_size_buckets(
    starts: np.ndarray, size: int, order: np.ndarray, r: np.ndarray, emb: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair inside the buckets of one size, as stacked Gram matrices: each row is read once per
    bucket (not once per pair), ``CHUNK_ROWS`` rows at a time."""
    iu, ju = np.triu_indices(size, 1)
    found_a, found_b, found_s = [], [], []
    per_chunk = max(1, CHUNK_ROWS // size)
    for c in range(0, len(starts), per_chunk):
        pos = starts[c : c + per_chunk, None] + np.arange(size)[None, :]  # [buckets, size]
        x = emb[order[pos]].astype(np.float32)  # [buckets, size, dim]
        sims = np.matmul(x, x.transpose(0, 2, 1))[:, iu, ju]  # [buckets, pairs]
        bi, pi = np.nonzero(sims >= threshold)
        found_a.append(r[pos[bi, iu[pi]]])
        found_b.append(r[pos[bi, ju[pi]]])
        found_s.append(sims[bi, pi])
    return np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_s)


def bucket_pairs(
    keys: np.ndarray, rows: np.ndarray, emb: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of rows with equal ``keys`` and cosine >= ``threshold``: (row a, row b, cosine), a < b."""
    order = np.lexsort((rows, keys))
    k, r = keys[order], rows[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    sizes = np.diff(np.r_[starts, len(k)])
    found_a, found_b, found_s = [], [], []
    for size in np.unique(sizes[(sizes > 1) & (sizes <= SMALL_BUCKET)]).tolist():
        a, b, s = _same_size_buckets(starts[sizes == size], size, order, r, emb, threshold)
        found_a.append(a)
        found_b.append(b)
        found_s.append(s)
    for start, size in zip(starts[sizes > SMALL_BUCKET], sizes[sizes > SMALL_BUCKET]):
        members = order[start : start + size]
        for s in range(0, size, BLOCK):
            x = emb[members[s : s + BLOCK]].astype(np.float32)
            for u in range(s, size, BLOCK):
                y = emb[members[u : u + BLOCK]].astype(np.float32)
                sims = x @ y.T
                ii, jj = np.nonzero(sims >= threshold)
                keep = (ii + s) < (jj + u)
                ii, jj = ii[keep], jj[keep]
                found_a.append(r[start + s + ii])
                found_b.append(r[start + u + jj])
                found_s.append(sims[ii, jj])
    if not found_a:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty.copy(), np.empty(0, dtype=np.float32)
    a, b, s = np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_s)
    return np.minimum(a, b), np.maximum(a, b), s


def unique_edges(a: np.ndarray, b: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each pair once (the same pair meets in several tables)."""
    if not len(a):
        return a, b, s
    pairs = np.stack([a, b], 1)
    _, first = np.unique(pairs, axis=0, return_index=True)
    return a[first], b[first], s[first]


def find_pairs(parts: Sequence[PartReader], total_rows: int, params: LshParams) -> tuple[np.ndarray, ...]:
    """All pairs above ``params.threshold`` that share a key in some table, over the parts, through Ray tasks."""
    import ray

    n_partitions = max(1, math.ceil(total_rows * params.tables_per_round / params.rows_per_partition))

    @ray.remote
    def scatter(read: PartReader, first_table: int) -> list:
        rows, emb = read()
        planes = hyperplanes(emb.shape[1], params)[first_table : first_table + params.tables_per_round]
        keys = table_keys(emb, planes)
        out = []
        for p in range(n_partitions):
            pieces = []
            for t in range(keys.shape[1]):
                mix = keys[:, t] * np.uint64(0x9E3779B97F4A7C15) + np.uint64(first_table + t)
                mine = (mix >> np.uint64(33)) % np.uint64(n_partitions) == p
                tagged = keys[mine, t] ^ (np.uint64(first_table + t) << np.uint64(56))
                pieces.append((tagged, rows[mine], emb[mine]))
            out.append(pieces)
        return out if n_partitions > 1 else out[0]

    @ray.remote
    def compare(*pieces_per_part: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        flat = [piece for pieces in pieces_per_part for piece in pieces if len(piece[0])]
        if not flat:  # a part without embeddings (rows scored before the signature was chosen) sends none
            empty = np.empty(0, dtype=np.int64)
            return empty, empty.copy(), np.empty(0, dtype=np.float32)
        keys = np.concatenate([f[0] for f in flat])
        rows = np.concatenate([f[1] for f in flat])
        emb = np.concatenate([f[2] for f in flat])
        return unique_edges(*bucket_pairs(keys, rows, emb, params.threshold))

    found = []
    for first in range(0, params.tables, params.tables_per_round):
        scattered = [scatter.options(num_returns=n_partitions).remote(read, first) for read in parts]
        if n_partitions == 1:
            scattered = [[s] for s in scattered]
        found += ray.get([compare.remote(*[s[p] for s in scattered]) for p in range(n_partitions)])
        del scattered
    if not found:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty.copy(), np.empty(0, dtype=np.float32)
    return unique_edges(*(np.concatenate([f[i] for f in found]) for i in range(3)))


def choose_kept(
    a: np.ndarray, b: np.ndarray, sims: np.ndarray, rank: Callable[[int], tuple]
) -> dict[int, tuple[int, float]]:
    """Rows to drop: ``{row: (kept row it duplicates, cosine)}``; ``rank(row)`` orders who stays (smallest first)."""
    neighbours: dict[int, list[tuple[int, float]]] = {}
    for x, y, s in zip(a.tolist(), b.tolist(), sims.tolist()):
        neighbours.setdefault(x, []).append((y, s))
        neighbours.setdefault(y, []).append((x, s))
    ranks = {v: rank(v) for v in neighbours}
    kept: set[int] = set()
    dropped: dict[int, tuple[int, float]] = {}
    for v in sorted(neighbours, key=ranks.__getitem__):
        near = [(s, n) for n, s in neighbours[v] if n in kept]
        if near:
            s, n = min(near, key=lambda sn: (-sn[0], ranks[sn[1]]))
            dropped[v] = (n, s)
        else:
            kept.add(v)
    return dropped
