"""The end of a stage over its manifest, reading each part written since the last stage end at most once.

A stage end must know every part's statistics (``_parts.json``: bytes, rows per status, column sizes; what
compaction plans from and ``_SUCCESS.json`` counts), keep one row of any ``video_id`` held twice (a
straggler of a killed run, a writer task Ray retried after its part landed) and merge the small parts
(``contracts.manifest.compact``). At VIDAL-10M's scale its first end faces ~39,000 new parts; on an object
store each read of a part is a request, and the merges already read every small part once.

So every part writer reports its part's ``_parts.json`` entry and the 64-bit hashes of its ids
(``contracts.id_hash``) to the driver (``Written``, 8 bytes a row). For a reported part the statistics and
the duplicate check need no read: the merges read it once. A part no writer reported in this run (a killed
run's, the first copy of a retried task, one a repair rewrote) is read once, footer and two columns
(``read_ids_and_stats``); a part ``_parts.json`` vouches for (compacted at an earlier end: few and large)
has its ``video_id`` column read, and only when the stage has new parts. Distinct hashes are distinct ids,
so the exact comparison (``manifest.dedupe_parts``) reads only the parts holding a hash seen twice: none in
a run that nothing interrupted.

A driver killed before its stage end leaves no ``Written``: its rerun reads those parts as unreported, and
a kill during the end leaves what ``recover_compaction`` and this same end repair (``_parts.json`` is
written last, after the duplicates are gone).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contracts import manifest, store
from contracts.id_hash import id_hashes


@dataclass
class Written:
    """What this run's part writers reported to the driver: each part's ``_parts.json`` entry and its ids'
    hashes (all parts' hashes in one buffer, 8 bytes a row)."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (first, end) in hashes
    buffer: bytearray = field(default_factory=bytearray)

    def add(self, name: str, entry: dict[str, Any], hashes: bytes) -> None:
        first = len(self.buffer) // 8
        self.buffer += hashes
        self.entries[name] = entry
        self.spans[name] = (first, first + len(hashes) // 8)

    def hashes(self) -> np.ndarray:
        return np.frombuffer(self.buffer, np.uint64)


def end_stage(
    root: str,
    stage: str,
    target_bytes: int,
    written: Written | None = None,
    map_groups: Callable[[Callable[[list[str]], Any], list[list[str]]], Any] = map,
) -> dict[str, int]:
    """Repair, deduplicate and compact a stage's manifest at its end; returns counts: duplicate rows
    removed, parts read for it (``parts_read``: unreported or vouched-for parts whose ids were needed),
    and compaction's parts before and after and merges."""
    written = written or Written()
    out_dir = manifest.stage_dir(root, stage)
    manifest.recover_compaction(root, stage)
    store.remove_temp_files(out_dir)
    sizes = manifest.part_sizes(root, stage)
    saved = manifest._read_stats(root, stage)
    vouched = [n for n, b in sizes.items() if saved.get(n, {}).get("bytes") == b]
    known = set(vouched)
    reported = [
        n for n, b in sizes.items() if n not in known and written.entries.get(n, {}).get("bytes") == b
    ]
    known.update(reported)
    unreported = [n for n in sizes if n not in known]
    stats = {**{n: saved[n] for n in vouched}, **{n: written.entries[n] for n in reported}}
    read = manifest._each_part(lambda n: _entry_and_hashes(store.join(out_dir, n), sizes[n]), unreported)
    stats.update({n: entry for n, (entry, _) in zip(unreported, read)})
    removed, parts_read = 0, len(unreported)
    if reported or unreported:  # new rows: the check covers every row (vouched parts' ids read)
        old = manifest._each_part(lambda n: _hashes_of(store.join(out_dir, n)), vouched)
        parts_read += len(vouched)
        by_part = [
            *zip(vouched, old),
            *((n, written.hashes()[slice(*written.spans[n])]) for n in reported),
            *((n, hashes) for n, (_, hashes) in zip(unreported, read)),
        ]
        del read, old
        suspects = _holding_a_hash_twice(by_part)
        del by_part
        if suspects:
            removed, rewritten = manifest.dedupe_parts([store.join(out_dir, n) for n in suspects])
            for uri in rewritten:
                name = uri.rsplit("/", 1)[1]
                stats.pop(name)
                if store.exists(uri):  # rewritten with the rows it keeps (else emptied, removed)
                    stats[name] = manifest.read_ids_and_stats(uri, _size(uri))[0]
    c = manifest.compact(root, stage, target_bytes, map_groups, stats=stats)
    return {"duplicates_removed": removed, "parts_read": parts_read, **c}


def _entry_and_hashes(uri: str, nbytes: int) -> tuple[dict[str, Any], np.ndarray]:
    entry, ids = manifest.read_ids_and_stats(uri, nbytes)
    return entry, id_hashes(ids)  # the ids' strings are not kept: 8 bytes a row


def _hashes_of(uri: str) -> np.ndarray:
    return id_hashes(manifest.read_part(uri, ["video_id"])["video_id"])


def _size(uri: str) -> int:
    fs, path = store.resolve(uri)
    return fs.get_file_info(path).size


def _holding_a_hash_twice(by_part: list[tuple[str, np.ndarray]]) -> list[str]:
    """The parts holding a hash that occurs twice among all of them (every copy of a duplicate id is in
    one of these parts; a hash collision between distinct ids only adds a part to compare)."""
    if not by_part:
        return []
    every = np.concatenate([h for _, h in by_part])
    every.sort()  # in place: the run's hashes once more, not twice
    twice = np.unique(every[1:][every[1:] == every[:-1]])
    del every
    if not len(twice):
        return []
    return [name for name, h in by_part if np.isin(h, twice).any()]
