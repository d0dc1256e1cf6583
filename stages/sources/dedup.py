"""Run-wide dedup of candidate ids across inputs, terms and batches.

The runner drops ids already in the manifest (earlier runs) and repeats inside one batch; videos
found by two search terms, two lists or two chunks of one list meet nowhere else. Here every chunk
of candidates *claims* its ids before it is emitted: the first claim of an id wins, later ones are
duplicates and are dropped.

Scale: ids are kept as 64-bit hashes in a sorted NumPy array (8 bytes) with the claiming chunk's
number (4 bytes) beside it, plus a small dict of recent claims merged into the arrays geometrically
(amortised O(log n) per id). 10 M ids take about 120 MB, split over ``shards`` Ray actors by hash.
Retries are safe: a chunk is named by its input and position, and a re-run of the same chunk (a
retried Ray task) gets its own ids back instead of seeing them as duplicates.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

MERGE_MIN = 1 << 16


def key_of(video_id: str) -> int:
    """A 64-bit hash of an id (collisions: about 1 in 10^6 over 10^7 ids)."""
    return int.from_bytes(hashlib.blake2b(video_id.encode(), digest_size=8).digest(), "little")


class KeyIndex:
    """First-claim-wins set of 64-bit keys, each remembering the chunk that claimed it."""

    def __init__(self) -> None:
        self.keys = np.empty(0, np.uint64)
        self.owners = np.empty(0, np.uint32)
        self.recent: dict[int, int] = {}
        self.owner_ids: dict[str, int] = {}
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self.keys) + len(self.recent)

    def claim(self, keys: list[int], owner: str) -> list[bool]:
        """For each key, True when this owner holds it (first claim, or a retry of the same owner)."""
        oid = self.owner_ids.setdefault(owner, len(self.owner_ids))
        arr = np.asarray(keys, dtype=np.uint64)
        pos = np.searchsorted(self.keys, arr)
        inside = pos < len(self.keys)
        hit = np.zeros(len(arr), bool)
        hit[inside] = self.keys[pos[inside]] == arr[inside]
        held_by = np.full(len(arr), -1, np.int64)
        held_by[hit] = self.owners[pos[hit]]
        out: list[bool] = []
        seen_here: set[int] = set()
        for k, was_hit, holder in zip(keys, hit.tolist(), held_by.tolist()):
            if k in seen_here:  # the same id twice in one chunk: only the first is kept
                out.append(False)
                continue
            seen_here.add(k)
            if not was_hit:
                holder = self.recent.setdefault(k, oid)
            out.append(holder == oid)
        self.duplicates += out.count(False)
        if len(self.recent) >= max(MERGE_MIN, len(self.keys) // 4):
            self._merge()
        return out

    def _merge(self) -> None:
        new_keys = np.fromiter(self.recent.keys(), np.uint64, len(self.recent))
        new_owners = np.fromiter(self.recent.values(), np.uint32, len(self.recent))
        keys = np.concatenate([self.keys, new_keys])
        order = np.argsort(keys, kind="stable")
        self.keys, self.owners = keys[order], np.concatenate([self.owners, new_owners])[order]
        self.recent = {}

    def stats(self) -> dict[str, int]:
        return {"ids": len(self), "duplicates": self.duplicates}


class RunDedup:
    """Claims ids against ``shards`` named Ray actors, or an in-process index when Ray is not used."""

    def __init__(self, name: str | None, shards: int = 1):
        self.name, self.shards = name, max(1, shards)
        self._local: KeyIndex | None = None
        self._actors: list[Any] | None = None

    @staticmethod
    def start(name: str, shards: int) -> list[Any]:
        """Create the shard actors (on the driver, before the plan runs); returns their handles."""
        import ray

        cls = ray.remote(num_cpus=0)(KeyIndex)
        return [cls.options(name=f"{name}-{i}", get_if_exists=True).remote() for i in range(max(1, shards))]

    def _handles(self) -> list[Any] | None:
        if self._actors is None and self.name:
            import ray

            if not ray.is_initialized():  # not under Ray (get_actor would start a local instance)
                self.name = None
                return None
            try:
                self._actors = [ray.get_actor(f"{self.name}-{i}") for i in range(self.shards)]
            except (ValueError, RuntimeError):  # no Ray, or not started by the driver: dedup locally
                self.name = None
        return self._actors

    def claim(self, video_ids: list[str], owner: str) -> list[bool]:
        """True for the ids this chunk keeps, False for duplicates of ids claimed elsewhere in the run."""
        keys = [key_of(v) for v in video_ids]
        actors = self._handles()
        if not actors:
            self._local = self._local or KeyIndex()
            return self._local.claim(keys, owner)
        import ray

        by_shard: dict[int, list[int]] = {}
        for i, k in enumerate(keys):
            by_shard.setdefault(k % self.shards, []).append(i)
        refs = {s: actors[s].claim.remote([keys[i] for i in idx], owner) for s, idx in by_shard.items()}
        out = [False] * len(keys)
        for s, idx in by_shard.items():
            for i, keep in zip(idx, ray.get(refs[s])):
                out[i] = keep
        return out


def collect_stats(actors: list[Any]) -> dict[str, int]:
    """Summed ``ids`` / ``duplicates`` over shard actors (driver side)."""
    import ray

    total = {"ids": 0, "duplicates": 0}
    for s in ray.get([a.stats.remote() for a in actors]):
        for k in total:
            total[k] += s[k]
    return total
