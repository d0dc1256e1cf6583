"""Near-duplicate removal across a run: LSH buckets through real Ray, exact comparison inside each, and the
score stage's run-wide pass over real videos (re-encoded, resized and trimmed copies of one clip).

The embeddings of the video cases come from the tiny model trained in ``tests.alignment_model``: it tells
colours and shapes apart but not much more, so the distinct clips differ in colour (two renderings of
one concept are semantic duplicates to it, as they would be to SemDedup).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from contracts import store
from contracts.status import FILTERED, OK
from pipeline.synthetic import CONCEPTS, encode_video, render_frames
from stages.base import RunContext
from stages.near_dup import (
    LshParams,
    bucket_pairs,
    choose_kept,
    find_pairs,
    hyperplanes,
    recall_at,
    table_keys,
)
from stages.probe import ProbeConfig, ProbeStage
from stages.score import ScoreConfig, ScoreStage, apply_run_wide_rules
from tests.alignment_model import trained_export


def planted(
    n: int, dim: int, dups: int, seed: int = 0, noise: float = 0.12
) -> tuple[np.ndarray, list[tuple]]:
    """``n`` random unit vectors, the last ``dups`` of them noisy copies of the first ``dups``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x[n - dups :] = (
        x[:dups] + noise * rng.standard_normal((dups, dim)).astype(np.float32) * np.sqrt(1 / dim) * 3
    )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16), [(i, n - dups + i) for i in range(dups)]


def brute_force(x: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    s = x.astype(np.float32) @ x.astype(np.float32).T
    a, b = np.nonzero(np.triu(s >= threshold, 1))
    return set(zip(a.tolist(), b.tolist()))


def readers(x: np.ndarray, bounds: list[int]):
    """Part readers over ``x`` cut at ``bounds`` (row numbers are global)."""
    from functools import partial

    def read(lo: int, hi: int):
        return np.arange(lo, hi, dtype=np.int64), x[lo:hi]

    edges = [0, *bounds, len(x)]
    return [partial(read, lo, hi) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]


def test_buckets_compare_exactly_and_the_recall_formula_holds():
    x, pairs = planted(3000, 64, 150)
    truth = brute_force(x, 0.9)
    assert set(pairs) <= truth
    params = LshParams(threshold=0.9, tables=8, bits=10)
    keys = table_keys(x, hyperplanes(64, params))
    found: set[tuple[int, int]] = set()
    for t in range(params.tables):
        a, b, s = bucket_pairs(keys[:, t], np.arange(len(x)), x, 0.9)
        assert (s >= 0.9).all() and (a < b).all()
        found |= set(zip(a.tolist(), b.tolist()))
    assert found <= truth  # exact inside buckets: nothing below the threshold
    cos = np.array([float(x[i].astype(np.float32) @ x[j].astype(np.float32)) for i, j in pairs])
    expected = np.mean([recall_at(c, params.tables, params.bits) for c in cos])
    assert len(found & truth) / len(truth) >= expected - 0.08


def test_a_large_bucket_is_compared_by_blocks():
    rng = np.random.default_rng(1)
    base = rng.standard_normal(16).astype(np.float32)
    x = base + 0.05 * rng.standard_normal((300, 16)).astype(np.float32)  # one tight cluster: one bucket
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    a, b, s = bucket_pairs(np.zeros(300, dtype=np.uint64), np.arange(300), x, 0.99)
    assert set(zip(a.tolist(), b.tolist())) == brute_force(x, 0.99)


def test_pairs_through_ray_do_not_depend_on_part_boundaries_or_partitions(ray_local):
    x, pairs = planted(20_000, 32, 200, seed=2, noise=0.08)
    params = LshParams(threshold=0.93, tables=12, bits=14, tables_per_round=4, rows_per_partition=5000)
    one = find_pairs(readers(x, []), len(x), params)
    many = find_pairs(
        readers(x, [3, 4000, 4001, 12_345]), len(x), LshParams(**{**params.__dict__, "tables_per_round": 5})
    )
    as_set = [set(zip(a.tolist(), b.tolist())) for a, b, _ in (one, many)]
    assert as_set[0] == as_set[1]
    assert len(as_set[0] & set(pairs)) >= 0.95 * len(pairs)
    assert as_set[0] <= brute_force(x, 0.93)


def test_the_longest_stays_then_the_smallest_id_and_a_chain_keeps_its_far_ends():
    ids, length = ["b", "a", "c", "d"], [2.0, 2.0, 3.0, 1.0]
    # b~a, a~c, a~d: c (the longest) stays, a goes for c; b and d are like a only, not like c: they stay
    a, b = np.array([0, 1, 1]), np.array([1, 2, 3])
    sims = np.array([0.99, 0.97, 0.98], dtype=np.float32)
    dropped = choose_kept(a, b, sims, lambda i: (-length[i], ids[i]))
    assert dropped.keys() == {1} and dropped[1][0] == 2 and dropped[1][1] == pytest.approx(0.97)
    # equal lengths: the smallest video_id stays, whatever the edge order
    dropped = choose_kept(np.array([1]), np.array([0]), np.array([0.99]), lambda i: (-2.0, ids[i]))
    assert dropped.keys() == {0} and dropped[0][0] == 1


# -- real videos through probe and the score stage -----------------------------------------------------
@pytest.fixture(scope="module")
def copies(tmp_path_factory) -> dict[str, Path]:
    """One clip, its re-encoded, resized and trimmed copies, and four clips of other colours."""
    d = tmp_path_factory.mktemp("copies")
    frames = render_frames(CONCEPTS[5], n_frames=40, size=(320, 240), seed=3)
    out = {"orig": d / "orig.mp4", "reenc": d / "reenc.mp4", "small": d / "small.mp4", "trim": d / "trim.mp4"}
    encode_video(out["orig"], frames, 20)
    encode_video(out["reenc"], frames, 20, codec="mpeg4")
    encode_video(
        out["small"], np.stack([np.array(Image.fromarray(f).resize((200, 150))) for f in frames]), 20
    )
    encode_video(out["trim"], frames[:32], 20)
    for k in (17, 30, 44, 60):
        out[f"other{k}"] = d / f"other{k}.mp4"
        encode_video(out[f"other{k}"], render_frames(CONCEPTS[k], n_frames=40, size=(320, 240), seed=3), 20)
    return out


@pytest.fixture(scope="module")
def scored(copies) -> list[dict]:
    probe = ProbeStage(ProbeConfig(short_side=64), RunContext(root=""))
    rows = [
        {"video_id": f"clip-{k}", **probe.process_row({"video_id": k, "media": str(p)})}
        for k, p in copies.items()
    ]
    stage = ScoreStage(
        ScoreConfig(model=f"vidal:{trained_export()}", device="cpu", fields=["mplug"]), RunContext("")
    )
    stage.setup()
    out = stage.process(pa.Table.from_pylist(rows)).to_pylist()
    assert all(r["status"] == OK for r in out)
    return out


def write_parts(root: Path, rows: list[dict], sizes: list[int]) -> None:
    table = ScoreStage.rows_to_table(rows)
    start = 0
    for k, n in enumerate(sizes):
        store.write_parquet(str(root / "score" / f"part-{k:05d}.parquet"), table.slice(start, n))
        start += n


def statuses(root: Path) -> dict[str, tuple[str, str | None]]:
    return {
        r["video_id"]: (r["status"], r["error"])
        for p in sorted((root / "score").glob("part-*.parquet"))
        for r in pq.read_table(p).to_pylist()
    }


def test_copies_are_found_distinct_clips_kept_whatever_the_order_and_parts(tmp_path, ray_local, scored):
    cfg = ScoreConfig(model="tiny", dedup_threshold=0.99)
    results = []
    for k, (order, sizes) in enumerate(
        [(range(8), [8]), ([7, 3, 0, 5, 1, 6, 2, 4], [3, 1, 4]), ([4, 2, 6, 1, 5, 0, 3, 7], [2, 2, 2, 2])]
    ):
        root = tmp_path / f"run{k}"
        write_parts(root, [scored[i] for i in order], sizes)
        counts = apply_run_wide_rules(str(root), "score", cfg)
        assert counts["near_duplicates"] == 3, counts
        results.append(statuses(root))
    assert results[0] == results[1] == results[2]
    got = results[0]
    # orig, reenc and small last as long (2 s); the smallest id of them stays; trim (1.6 s) goes too
    assert got["clip-orig"] == (OK, None)
    for copy in ("reenc", "small", "trim"):
        status, error = got[f"clip-{copy}"]
        assert status == FILTERED and error.startswith("near-duplicate of clip-orig (cosine ")
        assert float(error.split("cosine ")[1].split()[0]) >= 0.99
    assert all(got[f"clip-other{k}"] == (OK, None) for k in (17, 30, 44, 60))


def test_the_pass_is_recomputed_not_stacked(tmp_path, ray_local, scored):
    write_parts(tmp_path, scored, [4, 4])
    apply_run_wide_rules(str(tmp_path), "score", ScoreConfig(model="tiny", dedup_threshold=0.99))
    before = sorted((tmp_path / "score").glob("part-*.parquet"))
    same = apply_run_wide_rules(str(tmp_path), "score", ScoreConfig(model="tiny", dedup_threshold=0.99))
    assert same["near_duplicates"] == 3
    assert before == sorted((tmp_path / "score").glob("part-*.parquet"))  # nothing rewritten (names change)
    off = apply_run_wide_rules(str(tmp_path), "score", ScoreConfig(model="tiny", dedup=False))
    assert off["near_duplicates"] == 0 and all(s == OK for s, _ in statuses(tmp_path).values())
