"""Near-duplicate removal across a run: LSH buckets through real Ray, exact comparison inside each, and the
score stage's run-wide pass over real videos (re-encoded, resized and trimmed copies of one clip).

The embeddings of the video cases come from the tiny model trained in ``tests.alignment_model``: it tells
colours and shapes apart but not much more, so the distinct clips differ in colour (two renderings of
one concept are semantic duplicates to it, as they would be to SemDedup); or from the frame signature
(``score.dedup_embedding: frames``), which tells renderings apart too and is computed from the frames
alone. ``auto`` LSH sizes are checked against the recall formula over a range of run sizes, and the
formula against buckets of pairs planted at the threshold.
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
from pipeline.synthetic import CONCEPTS, demo_copies, encode_video, make_demo_media, render_frames
from stages.backends.frame_signature import frame_signature
from stages.base import RunContext
from stages.near_dup import (
    RECALL,
    LshParams,
    auto_lsh,
    bucket_pairs,
    choose_kept,
    find_pairs,
    hyperplanes,
    recall_at,
    table_keys,
)
from stages.probe import ProbeConfig, ProbeStage
from stages.score import SIGNATURE, ScoreConfig, ScoreStage, apply_run_wide_rules
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


@pytest.mark.parametrize("threshold", [0.9, 0.93, 0.95, 0.98])
def test_auto_lsh_meets_the_recall_bar_with_small_buckets_at_every_size(threshold):
    for rows in [2, 300, 5000, 100_000, 1_000_000, 10_000_000, 100_000_000]:
        tables, bits = auto_lsh(rows, threshold)
        assert recall_at(threshold, tables, bits) >= RECALL, (rows, tables, bits)
        assert recall_at(threshold, tables - 1, bits) < RECALL  # and no table more than it needs
        assert 8 <= bits <= 56 and (rows <= 2**11 or 4 < rows / 2**bits <= 8)  # 4-8 chance neighbours
    assert auto_lsh(10**6, 0.95) == (22, 17) and auto_lsh(10**5, 0.95) == (16, 14)


def test_explicit_lsh_sizes_are_used_as_given():
    assert auto_lsh(10**6, 0.95, tables=24, bits=20) == (24, 20)
    assert auto_lsh(10**6, 0.95, tables=24) == (24, 17)
    assert auto_lsh(10**6, 0.95, bits=20)[1] == 20
    cfg = ScoreConfig(model="tiny", dedup_tables=5, dedup_bits=9)
    assert (cfg.lsh(10**7).tables, cfg.lsh(10**7).bits) == (5, 9)
    assert (ScoreConfig(model="tiny").lsh(10**5).tables, ScoreConfig(model="tiny").lsh(10**5).bits) == (
        16,
        14,
    )
    for bad in ({"dedup_tables": 0}, {"dedup_bits": 57}, {"dedup_tables": "many"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ScoreConfig(model="tiny", **bad)


def test_pairs_planted_at_the_threshold_are_found_as_often_as_auto_promises():
    """Pairs at exactly the threshold, the hardest the pass must find: the share found by the auto tables
    is the formula's (0.98 or more), within binomial noise."""
    rng = np.random.default_rng(5)
    n, dim, pairs, c = 6000, 64, 400, 0.95
    x = rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for i in range(pairs):  # row n - pairs + i at cosine exactly c to row i
        z = rng.standard_normal(dim)
        z -= (z @ x[i]) * x[i]
        x[n - pairs + i] = c * x[i] + np.sqrt(1 - c * c) * z / np.linalg.norm(z)
    tables, bits = auto_lsh(n, c - 0.002)  # float16 storage moves cosines by ~1e-3
    params = LshParams(threshold=c - 0.002, tables=tables, bits=bits)
    x16 = x.astype(np.float16)
    keys = table_keys(x16, hyperplanes(dim, params))
    found: set[tuple[int, int]] = set()
    for t in range(tables):
        a, b, _ = bucket_pairs(keys[:, t], np.arange(n), x16, params.threshold)
        found |= set(zip(a.tolist(), b.tolist()))
    share = len(found & {(i, n - pairs + i) for i in range(pairs)}) / pairs
    assert share >= RECALL - 3 * np.sqrt(RECALL * (1 - RECALL) / pairs), share


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


@pytest.fixture(scope="module")
def probed(copies) -> dict[str, dict]:
    probe = ProbeStage(ProbeConfig(short_side=64), RunContext(root=""))
    return {k: probe.process_row({"video_id": k, "media": str(p)}) for k, p in copies.items()}


@pytest.fixture(scope="module")
def signed(probed) -> list[dict]:
    """The score stage's rows with frame signatures (the model is the demo's random ``tiny``: unused)."""
    rows = [{"video_id": f"clip-{k}", **r} for k, r in probed.items()]
    stage = ScoreStage(
        ScoreConfig(model="tiny", device="cpu", fields=["mplug"], dedup_embedding="frames"), RunContext("")
    )
    stage.setup()
    out = stage.process(pa.Table.from_pylist(rows)).to_pylist()
    assert all(r["status"] == OK and len(r[SIGNATURE]) == 2 * 1024 for r in out)
    return out


def test_frame_signatures_of_copies_are_close_and_of_other_clips_far(probed, tmp_path):
    sig = {k: frame_signature(r["frames"]) for k, r in probed.items()}
    assert all(abs(np.linalg.norm(v) - 1) < 1e-5 for v in sig.values())
    cos = {k: float(sig["orig"] @ v) for k, v in sig.items() if k != "orig"}
    assert min(cos["reenc"], cos["small"], cos["trim"]) >= 0.925, cos
    assert max(cos[f"other{k}"] for k in (17, 30, 44, 60)) < 0.85, cos
    # a still picture (no trail: the floor keeps JPEG noise from counting) and its MPEG-4 copy; another still
    for name, concept, codec in [
        ("still", 7, "libx264"),
        ("still-copy", 7, "mpeg4"),
        ("still-other", 8, "libx264"),
    ]:
        frame = render_frames(CONCEPTS[concept], n_frames=1, size=(320, 240), seed=concept)
        encode_video(tmp_path / f"{name}.mp4", frame.repeat(30, axis=0), 15, codec=codec)
    probe = ProbeStage(ProbeConfig(short_side=64), RunContext(root=""))
    still = {
        n: frame_signature(probe.process_row({"video_id": n, "media": str(tmp_path / f"{n}.mp4")})["frames"])
        for n in ("still", "still-copy", "still-other")
    }
    assert float(still["still"] @ still["still-copy"]) >= 0.95
    assert float(still["still"] @ still["still-other"]) < 0.5


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


@pytest.mark.parametrize(
    "rows, cfg",
    [
        ("scored", ScoreConfig(model="tiny", dedup_threshold=0.99)),
        ("signed", ScoreConfig(model="tiny", dedup_embedding="frames", dedup_threshold=0.92)),
    ],
    ids=["model", "frames"],
)
def test_copies_are_found_distinct_clips_kept_whatever_the_order_and_parts(
    tmp_path, ray_local, request, rows, cfg
):
    scored = request.getfixturevalue(rows)
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
        assert float(error.split(" >= ")[0].split()[-1]) >= cfg.dedup_threshold
        assert ("frame signatures" in error) == (cfg.dedup_embedding == "frames")
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


def test_rows_without_a_signature_are_left_out_not_a_crash(tmp_path, ray_local, signed):
    """Rows scored before ``dedup_embedding: frames`` was set carry no signature: they are not compared."""
    rows = [
        dict(r, **{SIGNATURE: None}) if r["video_id"] in ("clip-reenc", "clip-other17") else r for r in signed
    ]
    write_parts(tmp_path, rows, [3, 5])
    cfg = ScoreConfig(model="tiny", dedup_embedding="frames", dedup_threshold=0.92)
    counts = apply_run_wide_rules(str(tmp_path), "score", cfg)
    got = statuses(tmp_path)
    assert counts["near_duplicates"] == 2 and got["clip-reenc"] == (OK, None)
    assert got["clip-small"][0] == got["clip-trim"][0] == FILTERED
    write_parts(tmp_path / "none", [dict(r, **{SIGNATURE: None}) for r in signed], [4, 4])
    assert apply_run_wide_rules(str(tmp_path / "none"), "score", cfg)["near_duplicates"] == 0


def test_the_copies_planted_in_the_demo_media_are_near_duplicates_of_their_sources(tmp_path):
    """``make_demo_media(copies=3)`` at the demo's sizes (configs/demo.yaml), through probe at its short side:
    each copy's signature is within the demo's threshold of its source, and no other clip is."""
    import csv

    listing = make_demo_media(tmp_path, per_concept=1, seconds=2.0, fps=15, size=(320, 240), copies=3)
    with open(listing) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(CONCEPTS) + 3
    probe = ProbeStage(ProbeConfig(short_side=128), RunContext(root=""))
    sig = {
        Path(r["path"]).stem: frame_signature(
            probe.process_row({"video_id": "v", "media": r["path"]})["frames"]
        )
        for r in rows
    }
    for kind, i in demo_copies(3):
        pair = (f"{CONCEPTS[i].slug}-0", f"copy-{kind}-{CONCEPTS[i].slug}")
        assert float(sig[pair[0]] @ sig[pair[1]]) >= 0.92, (pair, float(sig[pair[0]] @ sig[pair[1]]))
        assert max(float(sig[pair[0]] @ v) for k, v in sig.items() if k not in pair) < 0.92
        (title,) = {r["title"] for r in rows if Path(r["path"]).stem in pair}  # listed as a re-upload
