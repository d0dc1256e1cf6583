"""Training throughput: does the loader keep the towers fed?

    python bench/bench_train.py --cpu [--data runs/demo/shard]       # this machine, CPU
    python bench/bench_train.py --gpu --data SHARDS --out DIR         # ViT-L/14 video tower, CUDA, bf16
    python bench/bench_train.py --gpu --device cpu --quick            # a dry run of the GPU section

CPU section, for the tiny model (configs/model/tiny.yaml) and the demo model (configs/train/demo.yaml),
with 1 and 2 loader workers: samples/s and data-wait % of ``python -m model.train`` on the shards and
its peak memory (trainer and loader processes); then the loader alone (samples/s it can decode) beside
the training demand (samples/s the towers consume when data is free).

GPU section: the LanguageBind video tower (ViT-L/14, 8 frames, temporal attention, LoRA r=16, patch
dropout 0.3; random weights of the real shapes) under bf16 autocast: per batch size, samples/s per
GPU, model FLOPs per step (counted by ``torch.utils.flop_counter``), MFU against the GPU's bf16 peak
and peak memory; then a real loop on ``--data`` shards with 8 loader workers for its data-wait %.
Results are printed as Markdown with the machine, and written to ``DIR/train_gpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from model.data import ShardStream, make_loader, tower_sizes  # noqa: E402
from model.train_config import load_train_config  # noqa: E402

# Dense bf16 peak FLOP/s by GPU name (vendor datasheets), for MFU.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}"


# -- CPU ----------------------------------------------------------------------------------------
def train_run(config: str, data: str, workers: int, steps: int, extra: list[str]) -> dict[str, Any]:
    """One ``python -m model.train`` subprocess; figures of its second half (after warm-up)."""
    with tempfile.TemporaryDirectory() as out:
        args = [
            sys.executable,
            "-m",
            "model.train",
            "--config",
            config,
            "--data",
            data,
            "--out",
            out,
            "--max-steps",
            str(steps),
            "--set",
            f"data.workers={workers}",
            "--set",
            f"train.log_every={steps // 2}",
            "--set",
            "eval.final=false",
            "--set",
            "train.export=false",
            "--set",
            "train.tensorboard=false",
            "--set",
            f"train.save_every={10 * steps}",
            *sum((["--set", e] for e in extra), []),
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        done = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(done.stderr[-2000:])
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        rows = [json.loads(x) for x in (Path(out) / "log.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["kind"] == "train"][-1]
    return {
        "samples_per_s": last["samples_per_s"],
        "data_wait": last["data_wait"],
        "peak_rss_mb": max(peak, before) / 1024,
    }


def loader_rate(cfg: Any, sizes: dict[str, Any], workers: int, batches: int) -> float:
    """Samples/s the loader alone delivers (after its first batch)."""
    data = cfg.data.model_copy(update={"workers": workers})
    stream = ShardStream(data, sizes, batches_per_epoch=batches + 1)
    it = iter(make_loader(stream))
    next(it)
    t0 = time.perf_counter()
    n = sum(len(b["key"]) for b in it)
    return n / (time.perf_counter() - t0)


def demand_rate(cfg: Any, steps: int) -> float:
    """Samples/s the towers consume when every batch is already in memory (forward + backward + AdamW)."""
    from model import LanguageBind, ModelConfig

    model = LanguageBind.from_config(ModelConfig.model_validate(cfg.model_dict()))
    opt = torch.optim.AdamW(model.optimizer_groups(1e-4, 0.2), betas=(0.9, 0.98), eps=1e-6)
    sizes = tower_sizes(model.config)["video"]
    b = cfg.data.batch_size
    x = torch.randn(b, sizes["num_frames"], 3, sizes["image_size"], sizes["image_size"])
    text = torch.randn(b, model.text.dim)
    from model.loss import ClipLoss

    loss_fn = ClipLoss()

    def step() -> None:
        out = model({"text_emb": text, "video": x})
        loss_fn(out["video"], out["text"], out["logit_scale"]["video"]).backward()
        opt.step()
        opt.zero_grad()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * b / (time.perf_counter() - t0)


def cpu_section(args: argparse.Namespace) -> str:
    configs = {"tiny": ["model=configs/model/tiny.yaml", "data.batch_size=32"], "demo": []}
    lines = [
        f"Machine: {machine()}; data: {args.data}; {args.steps} steps per run, figures of the second half.",
        "",
        "| model | loader workers | samples/s | data wait | peak RSS (MB) |",
        "|---|---|---|---|---|",
    ]
    for name, extra in configs.items():
        for workers in (1, 2):
            r = train_run("configs/train/demo.yaml", args.data, workers, args.steps, extra)
            lines.append(
                f"| {name} | {workers} | {r['samples_per_s']:.1f} | {100 * r['data_wait']:.0f}% | "
                f"{r['peak_rss_mb']:.0f} |"
            )
            print(lines[-1], flush=True)
    lines += [
        "",
        "| model | loader alone, 1 worker | loader alone, 2 workers | training demand (data free) |",
        "|---|---|---|---|",
    ]
    for name, extra in configs.items():
        cfg = load_train_config("configs/train/demo.yaml", [f"data.shards={args.data}", *extra])
        from model import ModelConfig

        sizes = tower_sizes(ModelConfig.model_validate(cfg.model_dict()))
        rates = [loader_rate(cfg, sizes, w, args.steps) for w in (1, 2)]
        lines.append(
            f"| {name} | {rates[0]:.0f} samples/s | {rates[1]:.0f} samples/s | "
            f"{demand_rate(cfg, max(5, args.steps // 4)):.1f} samples/s |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


# -- GPU ----------------------------------------------------------------------------------------
def vit_l14_video(quick: bool) -> dict[str, Any]:
    """The LanguageBind video tower's model config with random weights (tiny text tower, 768-d)."""
    import yaml

    model = yaml.safe_load((REPO / "configs/model/languagebind_vit_l14.yaml").read_text())
    video = model["modalities"]["video"]
    if quick:
        video.update(width=64, layers=2, heads=2, mlp_dim=128, image_size=56)
    return {"embed_dim": 768, "text": {"name_or_path": "tiny"}, "modalities": {"video": video}}


def gpu_section(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from torch.utils.flop_counter import FlopCounterMode

    from model import LanguageBind
    from model.loss import ClipLoss

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    model = LanguageBind.from_config(vit_l14_video(args.quick)).to(device)
    model.set_gradient_checkpointing(args.grad_checkpointing)
    opt = torch.optim.AdamW(model.optimizer_groups(1e-4, 0.2), betas=(0.9, 0.98), eps=1e-6)
    size = model.config.modalities["video"].image_size[0]
    loss_fn = ClipLoss()
    results: dict[str, Any] = {"gpu": name, "peak_bf16_flops": peak, "batches": []}
    lines = [
        f"Machine: {machine()}; ViT-L/14 video tower, 8 frames of {size}px, LoRA r=16, patch dropout 0.3, "
        f"bf16 autocast, gradient checkpointing {args.grad_checkpointing}.",
        "",
        "| batch / GPU | samples/s | TFLOP/step | MFU | peak memory (GB) |",
        "|---|---|---|---|---|",
    ]
    for batch in args.batches:
        x = torch.randn(batch, 8, 3, size, size, device=device)
        text = torch.randn(batch, 768, device=device)

        def step(x: torch.Tensor = x, text: torch.Tensor = text) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                out = model({"text_emb": text, "video": x})
            loss_fn(out["video"].float(), out["text"], out["logit_scale"]["video"]).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            step()
            with FlopCounterMode(display=False) as counter:
                step()
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            _sync(device)
        except torch.OutOfMemoryError:
            lines.append(f"| {batch} | out of memory | | | |")
            break
        dt = (time.perf_counter() - t0) / args.steps
        flops = counter.get_total_flops()
        mfu = flops / dt / peak if peak else None
        mem = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else 0.0
        results["batches"].append(
            {
                "batch": batch,
                "samples_per_s": batch / dt,
                "flops_per_step": flops,
                "mfu": mfu,
                "peak_memory_gb": mem,
            }
        )
        lines.append(
            f"| {batch} | {batch / dt:.1f} | {flops / 1e12:.2f} | "
            f"{'-' if mfu is None else f'{100 * mfu:.0f}%'} | {mem:.1f} |"
        )
        print(lines[-1], flush=True)
    if args.data:
        extra = [
            f"data.batch_size={args.batches[0]}",
            f"train.grad_checkpointing={str(args.grad_checkpointing).lower()}",
        ]
        cfg_path = _write_gpu_config(vit_l14_video(args.quick))
        workers = 1 if args.quick else 8
        r = train_run(cfg_path, args.data, workers, args.steps * 2, extra)
        results["loop"] = r
        lines += [
            "",
            f"Real loop on {args.data} (batch {args.batches[0]}, {workers} loader workers): "
            f"{r['samples_per_s']:.1f} samples/s, data wait {100 * r['data_wait']:.0f}%.",
        ]
    return "\n".join(lines), results


def _write_gpu_config(model: dict[str, Any]) -> str:
    import yaml

    cfg = {
        "model": model,
        "data": {"modalities": ["video"], "text_field": "raw", "shuffle_buffer": 500},
        "optim": {"lr": 1e-4, "warmup_steps": 1},
    }
    path = Path(tempfile.mkdtemp()) / "gpu.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--data", default="runs/demo/shard")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--quick", action="store_true", help="GPU section on small sizes (a dry run)")
    p.add_argument("--out", help="directory for train_gpu.json / train_gpu.md")
    args = p.parse_args()
    if not Path(args.data).exists() and "://" not in args.data:
        print(f"no shards at {args.data}: run `python -m pipeline.run --config configs/demo.yaml` first")
        return 2
    if args.cpu:
        print(cpu_section(args))
    if args.gpu:
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            print("no CUDA device: the GPU section needs one (or --device cpu --quick for a dry run)")
            return 2
        table, results = gpu_section(args)
        print(table)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "train_gpu.json").write_text(json.dumps(results, indent=2))
            (Path(args.out) / "train_gpu.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
