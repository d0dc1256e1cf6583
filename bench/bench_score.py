"""The score stage: alignment scoring frames/s on CPU, and near-duplicate removal at 100k and 1M embeddings.

Alignment: ``ScoreStage.process`` on batches of clips of 8 JPEG frames at probe's size (256 short side,
synthetic renderings) with one caption each: JPEG decode, the model's preprocessing, the towers and the
dot products, as the stage's actors run it. Models (random weights: speed only):

- ``hf-b32``: a transformers CLIP of ViT-B/32's sizes (``CLIPConfig()`` defaults), per-frame image
  embeddings averaged;
- ``languagebind-l14``: a released-layout LanguageBind video checkpoint of LanguageBind_Video_FT's
  shapes (ViT-L/14, 24 x 1024, 8 frames, temporal blocks; text 12 x 768); slow on CPU, so opt-in;
- ``tiny``: the demo's model.

Dedup: ``stages.score.apply_run_wide_rules`` over a score manifest of synthetic 768-d float16 embeddings
(random unit vectors, 1% of them noisy copies at cosine ~0.97 of another row) in parts of 50k rows:
the whole pass as the stage runs it at its end (reading the parts, LSH through Ray tasks, exact
comparison per bucket, choosing who stays, rewriting the parts that change). Reported: wall time, the
pairs' recall against the planted copies, the driver's peak RSS during the pass and the peak RSS summed over
the Ray processes it started (sampled every 0.2 s; counts the object-store pages each maps, so an upper
bound).

Usage::

    python bench/bench_score.py align [--models hf-b32,tiny] [--repeats 3]
    python bench/bench_score.py dedup --rows 100000 [--repeats 3] [--tables auto] [--bits auto] [--copy-cosine 0.952]

Dedup's LSH sizes default to the stage's (``auto``: chosen from the rows, ``stages.near_dup.auto_lsh``);
the tables and bits used are printed with each result.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from contracts import store  # noqa: E402
from contracts.encodings import encode_jpeg  # noqa: E402
from pipeline.synthetic import CONCEPTS, render_frames  # noqa: E402
from stages.base import RunContext  # noqa: E402
from stages.near_dup import recall_at  # noqa: E402
from stages.score import ScoreConfig, ScoreStage, apply_run_wide_rules  # noqa: E402

DIM = 768
PART_ROWS = 50_000


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def clip_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        c = CONCEPTS[i % len(CONCEPTS)]
        frames = render_frames(c, n_frames=8, size=(341, 256), seed=i)
        rows.append({"video_id": f"v{i}", "frames": [encode_jpeg(f, 90) for f in frames], "mplug": c.title})
    return rows


def model_spec(name: str, tmp: Path) -> str:
    if name == "tiny":
        return "tiny"
    if name == "hf-b32":
        from transformers import CLIPConfig, CLIPModel

        from tests.languagebind_ckpt import write_tokenizer

        vocab = write_tokenizer(tmp, "CLIP")
        cfg = CLIPConfig(
            text_config={"vocab_size": vocab, "bos_token_id": vocab - 2, "eos_token_id": vocab - 1}
        )
        CLIPModel(cfg).save_pretrained(tmp)
        return f"hf:{tmp}"
    if name == "languagebind-l14":
        from bench.bench_languagebind_load import TEXT_768, VIT_L
        from tests.languagebind_ckpt import write_checkpoint

        return (
            f"languagebind:{write_checkpoint(tmp / 'ckpt', 'video', vision_sizes=VIT_L, text_sizes=TEXT_768)}"
        )
    raise SystemExit(f"unknown model {name}")


def bench_align(models: list[str], repeats: int, clips: int) -> None:
    import torch

    rows = clip_rows(clips)
    import pyarrow as pa

    table = pa.Table.from_pylist(rows)
    for name in models:
        with tempfile.TemporaryDirectory() as tmp:
            spec = model_spec(name, Path(tmp))
            stage = ScoreStage(ScoreConfig(model=spec, device="cpu", fields=["mplug"]), RunContext(root=""))
            stage.setup()
            n = clips if name != "languagebind-l14" else 2
            part = table.slice(0, n)
            stage.process(part.slice(0, 1))  # warm-up
            times, loads = [], []
            for _ in range(repeats):
                start = time.perf_counter()
                out = stage.process(part)
                times.append(time.perf_counter() - start)
                loads.append(load())
                assert all(s == "ok" for s in out["status"].to_pylist())
            med = statistics.median(times)
            print(
                json.dumps(
                    {
                        "model": name,
                        "clips": n,
                        "frames": 8 * n,
                        "torch_threads": torch.get_num_threads(),
                        "seconds": [round(t, 2) for t in times],
                        "frames_per_s": round(8 * n / med, 2),
                        "load": loads,
                    }
                ),
                flush=True,
            )


class RssSampler:
    """Peak RSS of this process and peak RSS summed over its descendants (the local Ray instance it started:
    GCS, raylet, workers), sampled in a thread."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.driver_peak = 0
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self.stop.is_set():
            total = 0
            for p in self.me.children(recursive=True):  # this driver's Ray processes, not other sessions'
                try:
                    total += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak = max(self.peak, total)
            self.driver_peak = max(self.driver_peak, self.me.memory_info().rss)
            self.stop.wait(0.2)

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def write_manifest(
    root: Path, rows: int, copy_cosine: float | None = None, seed: int = 0
) -> set[tuple[str, str]]:
    """Parts of a score manifest; the last 1% of each part are noisy copies (cosine ~0.97, or exactly
    ``copy_cosine``) of random rows of the part before that are not copies themselves (of its own first
    half for the first part): in a chain a-b-c the pass keeps a and c, so b-c would count as missed.
    Returns the (original, copy) id pairs."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    planted: set[tuple[str, str]] = set()
    previous: np.ndarray | None = None
    for lo in range(0, rows, PART_ROWS):
        n = min(rows, lo + PART_ROWS) - lo
        x = rng.standard_normal((n, DIM), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        dups = max(1, n // 100)
        src, src_lo = (previous, lo - PART_ROWS) if previous is not None else (x[: n // 2], lo)
        originals = len(src) - max(1, len(src) // 100) if previous is not None else len(src)
        pick = rng.choice(originals, size=dups, replace=False)  # not a copy: no chains of copies
        noise = rng.standard_normal((dups, DIM), dtype=np.float32) * (0.25 / np.sqrt(DIM))
        if copy_cosine is None:
            x[n - dups :] = src[pick] + noise
        else:  # the noise made orthogonal to the original: the copy sits at exactly copy_cosine
            noise -= np.sum(noise * src[pick], axis=1, keepdims=True) * src[pick]
            noise /= np.linalg.norm(noise, axis=1, keepdims=True)
            x[n - dups :] = copy_cosine * src[pick] + np.sqrt(1 - copy_cosine**2) * noise
        x[n - dups :] /= np.linalg.norm(x[n - dups :], axis=1, keepdims=True)
        planted |= {(f"v{src_lo + int(i):08d}", f"v{lo + n - dups + k:08d}") for k, i in enumerate(pick)}
        previous = x
        emb = x.astype("<f2")
        table = pa.table(
            {
                "video_id": [f"v{j:08d}" for j in range(lo, lo + n)],
                "status": ["ok"] * n,
                "error": pa.nulls(n, pa.string()),
                "score_mplug": pa.array(rng.uniform(0, 0.4, n), pa.float32()),
                "score_rule": pa.nulls(n, pa.string()),
                "clip_embedding": pa.array([emb[i].tobytes() for i in range(n)], pa.binary()),
                "dedup_length": pa.array(rng.uniform(2, 20, n)),
            }
        )
        store.write_parquet(str(root / "score" / f"part-{lo // PART_ROWS:05d}.parquet"), table)
    return planted


def bench_dedup(
    rows: int,
    repeats: int,
    cpus: int,
    tables_per_round: int,
    tables: int | str,
    bits: int | str,
    copy_cosine: float | None = None,
) -> None:
    import pyarrow.parquet as pq
    import ray

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(1) as pool:  # the generator's memory is not the pass's
            planted = pool.apply(write_manifest, (root, rows, copy_cosine))
        print(
            json.dumps({"rows": rows, "manifest_written_s": round(time.perf_counter() - t0, 1)}), flush=True
        )
        # threshold 0.95 (the default); tables, bits and tables per round as given
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        cfg = ScoreConfig(
            model="tiny", dedup_tables_per_round=tables_per_round, dedup_tables=tables, dedup_bits=bits
        )
        for r in range(repeats):
            with RssSampler() as rss:
                start = time.perf_counter()
                counts = apply_run_wide_rules(str(root), "score", cfg)
                wall = time.perf_counter() - start
            dropped = {
                (row["error"].split()[2], row["video_id"])
                for p in sorted((root / "score").glob("part-*.parquet"))
                for row in pq.read_table(p, columns=["video_id", "status", "error"]).to_pylist()
                if row["status"] == "filtered"
            }
            found = {p for p in planted if p in dropped or p[::-1] in dropped}
            lsh_used = (counts["lsh_tables"], counts["lsh_bits"])
            print(
                json.dumps(
                    {
                        "rows": rows,
                        "repeat": r,
                        "tables": counts["lsh_tables"],
                        "bits": counts["lsh_bits"],
                        "sizes": f"{tables} x {bits}",
                        "tables_per_round": tables_per_round,
                        "wall_s": round(wall, 1),
                        "near_duplicates": counts["near_duplicates"],
                        "planted": len(planted),
                        "copy_cosine": copy_cosine or "~0.97",
                        "planted_found": round(len(found) / len(planted), 4),
                        "recall_at_formula": round(recall_at(copy_cosine or 0.97, *lsh_used), 4),
                        "driver_peak_rss_mb": round(rss.driver_peak / 2**20),
                        "workers_peak_rss_sum_mb": round(rss.peak / 2**20),
                        "load": load(),
                    }
                ),
                flush=True,
            )
    ray.shutdown()


def lsh_size(v: str) -> int | str:
    return v if v == "auto" else int(v)


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("align")
    a.add_argument("--models", default="hf-b32,tiny")
    a.add_argument("--repeats", type=int, default=3)
    a.add_argument("--clips", type=int, default=16)
    d = sub.add_parser("dedup")
    d.add_argument("--rows", type=int, default=100_000)
    d.add_argument("--repeats", type=int, default=3)
    d.add_argument("--cpus", type=int, default=2)
    d.add_argument("--tables-per-round", type=int, default=4)
    d.add_argument("--tables", type=lsh_size, default="auto", help="LSH tables: auto (the default) or N")
    d.add_argument("--bits", type=lsh_size, default="auto", help="bits per table: auto (the default) or N")
    d.add_argument(
        "--copy-cosine", type=float, default=None, help="plant copies at exactly this cosine (default ~0.97)"
    )
    args = ap.parse_args()
    if args.what == "align":
        bench_align(args.models.split(","), args.repeats, args.clips)
    else:
        bench_dedup(
            args.rows,
            args.repeats,
            args.cpus,
            args.tables_per_round,
            args.tables,
            args.bits,
            args.copy_cosine,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
