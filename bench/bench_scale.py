"""Resume state at scale (issue 19, the done-id part only): what the done-id structure costs per worker and
how fast a batch is filtered against it, old (a ``frozenset`` built in every worker from a pickled list)
against new (``pipeline.done_ids.DoneIds``: sorted 64-bit hashes plus the ids as one byte buffer, mapped
zero-copy from the object store), at 1M and 3M synthetic ids, projected linearly to 10M.

    python bench/bench_scale.py                 # 1M and 3M
    python bench/bench_scale.py --sizes 1000000

Memory: old = RSS growth of unpickling the list and building the set (what each worker held); new = the
arrays' bytes, and how many of the pickled bytes travel as out-of-band buffers (pickle protocol 5, what
Ray's object store maps zero-copy, so one copy per node whatever its number of workers). Filter: batches of
1024 ids, half done, median of the repeats. The load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.done_ids import DoneIds  # noqa: E402

MiB = 2**20
TARGET = 10_076_613  # VIDAL-10M's entries


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def synthetic_ids(n: int, seed: int = 0) -> pa.Array:
    # YouTube-shaped: 11 characters, like VIDAL's ids
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", np.uint8)
    chars = alphabet[rng.integers(0, len(alphabet), size=(n, 11))]
    ids = pa.array(chars.view("S11").ravel().astype(str))
    return ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids


def batches(ids: pa.Array, n: int, size: int = 1024) -> list[pa.Array]:
    rng = np.random.default_rng(1)
    fresh = synthetic_ids(n // 2, seed=2)  # ids of another draw: almost surely not done
    out = []
    for _ in range(50):
        done_part = ids.take(pa.array(rng.integers(0, len(ids), size // 2)))
        new_part = fresh.take(pa.array(rng.integers(0, len(fresh), size // 2)))
        out.append(pa.concat_arrays([done_part, new_part]))
    return out


def measure(n: int, repeat: int) -> dict[str, float]:
    ids = synthetic_ids(n)
    queries = batches(ids, n)
    r: dict[str, float] = {"ids": n}

    payload = pickle.dumps(ids.to_pylist())  # what the old runner put in the object store
    gc.collect()
    before = rss()
    t = time.perf_counter()
    old = frozenset(pickle.loads(payload))
    r["old_build_s"] = time.perf_counter() - t
    r["old_worker_mib"] = (rss() - before) / MiB
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        for q in queries:
            pa.array([v not in old for v in q.to_pylist()], pa.bool_())
        times.append(time.perf_counter() - t)
    r["old_filter_ids_per_s"] = len(queries) * 1024 / statistics.median(times)
    del old, payload
    gc.collect()

    t = time.perf_counter()
    new = DoneIds.build(ids)
    r["new_build_s"] = time.perf_counter() - t  # on the driver, once per stage
    r["new_shared_mib"] = new.nbytes / MiB
    buffers: list[pickle.PickleBuffer] = []
    inband = pickle.dumps(new, protocol=5, buffer_callback=buffers.append)
    r["new_inband_bytes"] = len(inband)
    r["new_out_of_band_mib"] = sum(b.raw().nbytes for b in buffers) / MiB
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        for q in queries:
            new.is_done(q)
        times.append(time.perf_counter() - t)
    r["new_filter_ids_per_s"] = len(queries) * 1024 / statistics.median(times)
    assert new.is_done(queries[0])[:512].all()
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000])
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    results = [measure(n, a.repeat) for n in a.sizes]
    for r in results:
        print({k: round(v, 3) for k, v in r.items()})
    if len(results) >= 2:
        lo, hi = results[0], results[-1]
        for key in ("old_worker_mib", "new_shared_mib", "old_build_s", "new_build_s"):
            slope = (hi[key] - lo[key]) / (hi["ids"] - lo["ids"])
            proj = hi[key] + slope * (TARGET - hi["ids"])
            print(
                f"{key} at 10M: {hi[key]:.1f} + ({hi[key]:.1f} - {lo[key]:.1f}) / {(hi['ids'] - lo['ids']) / 1e6:g}M "
                f"x {(TARGET - hi['ids']) / 1e6:.2f}M = {proj:.1f}"
            )
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
