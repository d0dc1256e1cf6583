"""Benchmark evaluation throughput: does decoding keep the tower fed, and how long do the paper's runs take?

    python bench/bench_eval.py --cpu [--videos 48] [--repeats 3] [--checkpoint runs/train/demo/export]
    python bench/bench_eval.py --gpu [--out DIR]                 # ViT-L/14 towers, CUDA, bf16
    python bench/bench_eval.py --gpu --device cpu --quick       # a dry run of the GPU section

CPU section: an MSR-VTT folder in LanguageBind's layout (``MSRVTT_JSFUSION_test.csv`` +
``MSRVTT_Videos/``) of generated 4 s 320x240 30 fps H.264 clips (MSR-VTT's own resolution), evaluated
by the same runner ``python -m model.eval --benchmark msrvtt`` uses, with the demo model
(``configs/model/demo.yaml``: MiniLM text tower, 64 px video tower; a demo-trained export with
``--checkpoint``), for 0, 1 and 2 loader workers: items/s of the embedding loop and the share of its
wall time spent waiting for decoded clips (median of ``--repeats``), with the load average.

GPU section: the LanguageBind towers at their real shapes (random weights; ViT-L/14, 8 frames at 224
for video, the 126 x 1036 fbank for audio) under bf16 autocast: tower items/s at batch 32, and the
decode rate of 16 loader workers on the same generated clips; the projected wall time of the full
MSR-VTT 1k-A run (1000 videos; the 1000 captions cost little beside them) is the slower of the two
per item times 1000, and of ESC-50 (2000 clips of 5 s) the audio tower's time for 2000 (fbank
decoding not measured: it is cheap beside video decoding).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from model.benchmarks import registry  # noqa: E402
from model.benchmarks.runner import embed_items, run_benchmark  # noqa: E402


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def make_msrvtt(root: Path, n: int, seconds: float = 4.0, fps: int = 30) -> Path:
    """An MSR-VTT folder in LanguageBind's layout with ``n`` generated clips and one caption each."""
    import csv

    from pipeline.synthetic import CONCEPTS, make_clip

    d = root / "MSRVTT"
    (d / "MSRVTT_Videos").mkdir(parents=True, exist_ok=True)
    with open(d / "MSRVTT_JSFUSION_test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "vid_key", "video_id", "sentence"])
        for i in range(n):
            c = CONCEPTS[i % len(CONCEPTS)]
            w.writerow([f"ret{i}", f"msr{7010 + i}", f"video{7010 + i}", c.title])
            make_clip(
                d / "MSRVTT_Videos" / f"video{7010 + i}.mp4",
                c,
                seconds=seconds,
                fps=fps,
                size=(320, 240),
                audio=False,
                seed=i,
            )
    return root


def demo_model(checkpoint: str | None) -> Any:
    from model import LanguageBind
    from model.benchmarks.cli import load_any

    if checkpoint:
        return load_any(checkpoint, "cpu")
    torch.manual_seed(0)
    return LanguageBind.from_config(REPO / "configs" / "model" / "demo.yaml")


def cpu_section(args: argparse.Namespace) -> dict[str, Any]:
    model = demo_model(args.checkpoint)
    bench = registry.get("msrvtt")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = bench.read(make_msrvtt(Path(tmp), args.videos))
        for workers in (0, 1, 2):
            runs = []
            for _ in range(args.repeats):
                before = load_average()
                rec = run_benchmark(
                    model,
                    bench,
                    data,
                    model_name="demo",
                    paper_row="LanguageBind",
                    batch_size=16,
                    workers=workers,
                    progress=False,
                )
                runs.append({**rec["timing"], "load_before": before, "load_after": load_average()})
            rows.append(
                {
                    "workers": workers,
                    "items_per_s": statistics.median(r["items_per_s"] for r in runs),
                    "data_wait": statistics.median(r["data_wait"] for r in runs),
                    "runs": runs,
                }
            )
            print(
                f"workers {workers}: {rows[-1]['items_per_s']:.1f} videos/s, data wait "
                f"{100 * rows[-1]['data_wait']:.0f}% (load {runs[0]['load_before']} -> {runs[-1]['load_after']})",
                flush=True,
            )
    return {"videos": args.videos, "repeats": args.repeats, "cpus": os.cpu_count(), "rows": rows}


def gpu_section(args: argparse.Namespace) -> dict[str, Any]:
    from model import LanguageBind

    vit = (
        {"width": 64, "layers": 2, "heads": 2, "mlp_dim": 128}
        if args.quick
        else {"width": 1024, "layers": 24, "heads": 16, "mlp_dim": 4096}
    )  # --quick: a dry run of the code path
    cfg = {
        "text": {"name_or_path": "tiny"},
        "embed_dim": 768,
        "modalities": {
            "video": {
                **vit,
                "patch_size": 14,
                "image_size": 224,
                "num_frames": 8,
                "temporal": True,
                "patch_dropout": 0.0,
            },
            "audio": {**vit, "patch_size": 14, "image_size": [126, 1036], "patch_dropout": 0.0},
        },
    }
    model = LanguageBind.from_config(cfg).to(args.device).eval()
    cuda = str(args.device).startswith("cuda")
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    batch, clips = (4, 8) if args.quick else (32, 96)
    out: dict[str, Any] = {"gpu": torch.cuda.get_device_name() if cuda else args.device, "quick": args.quick}
    shapes = {"video": (8, 3, 224, 224), "audio": (3, 126, 1036)}
    for m, shape in shapes.items():
        x = torch.randn(batch, *shape)
        with amp():
            model.encode(m, x[:2])  # warm-up
        sync()
        t0 = time.perf_counter()
        for _ in range(3):
            with amp():
                model.encode(m, x, batch_size=batch)
        sync()
        out[f"{m}_tower_items_per_s"] = 3 * batch / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        items = registry.get("msrvtt").read(make_msrvtt(Path(tmp), clips)).items
        _, timing = embed_items(
            model,
            "video",
            items,
            batch_size=batch,
            workers=min(16, os.cpu_count() or 1),
            progress=False,
            amp=amp,
        )
    out["video_pipeline_items_per_s"] = timing["items_per_s"]
    out["video_data_wait"] = timing["data_wait"]
    out["msrvtt_1kA_projected_s"] = 1000 / min(timing["items_per_s"], out["video_tower_items_per_s"])
    out["esc50_tower_only_projected_s"] = 2000 / out["audio_tower_items_per_s"]
    print(json.dumps(out, indent=2))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--videos", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--checkpoint", help="a demo-trained export (default: the demo config's random towers)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="GPU section with tiny towers (checks the code path)")
    p.add_argument("--out", default="bench/out/eval")
    args = p.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    results: dict[str, Any] = {"load_average_start": load_average()}
    if args.cpu or not args.gpu:
        results["cpu"] = cpu_section(args)
    if args.gpu:
        results["gpu"] = gpu_section(args)
    results["load_average_end"] = load_average()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
