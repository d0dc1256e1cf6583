"""The done-id filter is exact: every id that is done is dropped, every other kept, with real and forced
hash collisions, through pickling (what the object store does) and on sliced, chunked and null inputs."""

from __future__ import annotations

import pickle
import random
import string

import numpy as np
import pyarrow as pa
import pytest

from pipeline.done_ids import DoneIds, PendingIds, id_hashes


def _ids(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + "-_é"
    return list({"".join(rng.choices(alphabet, k=rng.randint(0, 24))) for _ in range(n)})


@pytest.mark.parametrize("bits", [64, 8, 2, 1])
def test_filter_is_exact_with_forced_collisions(bits):
    universe = _ids(3000, seed=bits)
    done_list = universe[: len(universe) // 2]
    done = pickle.loads(pickle.dumps(DoneIds.build(pa.array(done_list), bits=bits)))
    if bits < 64:  # the forced collisions are really there: far fewer distinct hashes than ids
        assert len(np.unique(done.hashes)) <= 2**bits < len(done_list)
    queried = universe[:]
    random.Random(1).shuffle(queried)
    mask = done.is_done(pa.array(queried))
    assert mask.tolist() == [q in set(done_list) for q in queried]
    batch = pa.table({"video_id": queried, "n": list(range(len(queried)))})
    kept = done.drop_done(batch)
    assert sorted(kept["video_id"].to_pylist()) == sorted(set(universe) - set(done_list))
    assert len(kept) + len(done_list) == len(universe)  # every id exactly once, none lost


def test_hash_is_stable_and_matches_a_reference_fnv1a():
    def fnv(s: str) -> int:
        h = 0xCBF29CE484222325
        for b in s.encode():
            h = ((h ^ b) * 0x100000001B3) % 2**64
        return h

    ids = ["", "a", "abc", "youtube-dQw4w9WgXcQ", "é-c3"]
    assert id_hashes(pa.array(ids)).tolist() == [fnv(s) for s in ids]


def test_sliced_chunked_and_empty_inputs():
    done = DoneIds.build(pa.chunked_array([["a", "b"], ["c"]]))
    sliced = pa.array(["x", "a", "y", "c", "b"]).slice(1, 3)  # a, y, c
    assert done.is_done(sliced).tolist() == [True, False, True]
    assert done.pending(pa.chunked_array([["a", "z"], ["c", "w"]])).to_pylist() == ["z", "w"]
    empty = DoneIds.build(pa.array([], pa.string()))
    assert len(empty) == 0 and empty.is_done(pa.array(["a"])).tolist() == [False]
    assert done.is_done(pa.array([None, "a"], pa.string())).tolist() == [False, True]


@pytest.mark.parametrize("bits", [64, 8, 2])
def test_pending_filter_keeps_every_pending_row_and_errs_only_towards_redoing(bits):
    """``PendingIds`` (what workers get when the upstream's ids are known): every pending id is kept,
    whatever the collisions; a done id is kept only when it shares a pending id's hash (then redone, its
    duplicate removed at the stage end), and with 64 bits none here is."""
    universe = _ids(3000, seed=10 + bits)
    pending_list = universe[: len(universe) // 3]
    pending = pickle.loads(pickle.dumps(PendingIds.build(pa.array(pending_list), bits=bits)))
    assert pending.nbytes <= 8 * len(pending_list)
    queried = universe[:]
    random.Random(2).shuffle(queried)
    batch = pa.table({"video_id": queried, "n": list(range(len(queried)))})
    kept = set(pending.keep_pending(batch)["video_id"].to_pylist())
    assert set(pending_list) <= kept  # no pending row lost
    wrongly_kept = kept - set(pending_list)
    pending_hashes = set(id_hashes(pa.array(pending_list), bits).tolist())
    assert all(
        h in pending_hashes for h in id_hashes(pa.array(sorted(wrongly_kept), pa.string()), bits).tolist()
    )
    if bits == 64:
        assert kept == set(pending_list)
    else:  # the forced collisions really keep done rows, so the test above is not vacuous
        assert wrongly_kept
    assert PendingIds.build(pa.array([], pa.string())).keep_pending(batch).num_rows == 0


def test_pending_in_chunks_is_the_same_as_at_once():
    universe = _ids(2000, seed=7)
    done = DoneIds.build(pa.array(universe[::3]), bits=4)
    queried = pa.chunked_array([universe[:1500], universe[1500:]])
    expected = [v for v in universe if v not in set(universe[::3])]
    assert done.pending(queried, chunk=7).to_pylist() == expected
    assert done.pending(queried).to_pylist() == expected
    assert done.pending(pa.array([], pa.string())).to_pylist() == []
