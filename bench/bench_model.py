"""Model throughput: forward + backward samples/s and model FLOPs utilisation of the towers.

    python bench/bench_model.py                  # CPU: tiny and demo towers, patch-dropout speed-up
    python bench/bench_model.py --gpu            # + ViT-L/14 video tower (8 frames) on CUDA, bf16, SDPA
    python bench/bench_model.py --gpu-dry-run    # the GPU section's code on CPU with a tiny tower

MFU = counted model FLOPs per second / the peak measured in the same run by a large matmul (fp32 on
CPU, bf16 on GPU; the GPU datasheet peak is shown beside it). FLOPs are counted with
``torch.utils.flop_counter`` on one extra step with attention switched to transformers' eager
(matmul) implementation, because the counter does not see CPU SDPA kernels; timing runs use SDPA.
Backward FLOPs are what autograd really runs: frozen weights get input gradients, not weight ones.
The towers run without the text tower (frozen and cached, it is not part of the step cost).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers.models.clip.modeling_clip import CLIPAttention  # noqa: E402

from model.model_config import ModelConfig, TowerConfig  # noqa: E402
from model.vision import ModalityTower  # noqa: E402

CONFIGS = REPO / "configs" / "model"
DATASHEET_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}
OPEN_CLIP_L14_A100 = 70.0  # open_clip's ViT-L/14 training figure, image samples/s per A100


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} CPU cores ({platform.machine()}), {torch.get_num_threads()} torch threads, {gpu}, "
        f"torch {torch.__version__}, load average {load:.1f} at start"
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n x n matmul on ``device``: the attainable peak for MFU."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


@contextlib.contextmanager
def eager_attention(tower: torch.nn.Module) -> Iterator[None]:
    """Run attention as plain matmuls so that the FLOP counter sees it."""
    configs = {id(m.config): m.config for m in tower.modules() if isinstance(m, CLIPAttention)}
    saved = {k: c._attn_implementation for k, c in configs.items()}
    for c in configs.values():
        c._attn_implementation = "eager"
    try:
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation = saved[k]


def input_for(cfg: TowerConfig, batch: int, device: torch.device) -> torch.Tensor:
    h, w = cfg.image_size
    shape = (
        (batch, cfg.num_frames, cfg.in_channels, h, w)
        if cfg.num_frames > 1
        else (batch, cfg.in_channels, h, w)
    )
    return torch.randn(shape, device=device)


def step_flops(tower: ModalityTower, x: torch.Tensor, autocast: contextlib.AbstractContextManager) -> int:
    """Counted FLOPs of one forward + backward (patch dropout as configured, training mode)."""
    with eager_attention(tower), FlopCounterMode(display=False) as counter, autocast:
        tower(x).float().pow(2).mean().backward()
    tower.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_steps(
    tower: ModalityTower, x: torch.Tensor, steps: int, autocast: contextlib.AbstractContextManager
) -> float:
    """Median seconds of a forward + backward step after two warm-up steps."""
    times = []
    for i in range(steps + 2):
        sync(x.device)
        start = time.perf_counter()
        with autocast:
            loss = tower(x).float().pow(2).mean()
        loss.backward()
        tower.zero_grad(set_to_none=True)
        sync(x.device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(
    cfg: TowerConfig, batch: int, steps: int, device: torch.device, peak: float, bf16: bool = False
) -> dict:
    torch.manual_seed(0)
    tower = ModalityTower(cfg, 384)
    tower.add_lora()
    tower.to(device).train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    flops = step_flops(tower, input_for(cfg, 1, device), autocast) * batch  # FLOPs are linear in batch
    seconds = time_steps(tower, input_for(cfg, batch, device), steps, autocast)
    params = sum(p.numel() for p in tower.parameters())
    trainable = sum(p.numel() for p in tower.parameters() if p.requires_grad)
    return {
        "samples_s": batch / seconds,
        "step_s": seconds,
        "gflop_step": flops / 1e9,
        "mfu": flops / seconds / peak,
        "params_m": params / 1e6,
        "trainable_m": trainable / 1e6,
    }


def tower_config(path: Path, modality: str, **update: object) -> TowerConfig:
    cfg = ModelConfig.load(path).modalities[modality]
    return TowerConfig.model_validate({**cfg.model_dump(), **update})


def cpu_section(steps: int) -> None:
    device = torch.device("cpu")
    peak = matmul_peak(device, torch.float32, 2048)
    print(
        f"## CPU\n\n{machine()}\n\nmeasured fp32 matmul peak (2048^3, best of 5): {peak / 1e9:.1f} GFLOP/s\n"
    )
    print("| config | modality | batch | trainable / params (M) | GFLOP / step | step s | samples/s | MFU |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    cases = [
        ("tiny", "video", 16),
        ("tiny", "audio", 8),
        ("tiny", "depth", 32),
        ("demo", "video", 16),
        ("demo", "audio", 8),
        ("demo", "depth", 32),
    ]
    for name, modality, batch in cases:
        r = measure(tower_config(CONFIGS / f"{name}.yaml", modality), batch, steps, device, peak)
        print(
            f"| {name} | {modality} | {batch} | {r['trainable_m']:.2f} / {r['params_m']:.2f} | {r['gflop_step']:.2f} "
            f"| {r['step_s']:.3f} | {r['samples_s']:.1f} | {100 * r['mfu']:.1f}% |"
        )
    print("\nPatch dropout (training mode, same batch): keep-all vs drop half of the patch tokens\n")
    print(
        "| config | modality | batch | samples/s p=0 | samples/s p=0.5 | speed-up | GFLOP/step p=0 / p=0.5 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, modality, batch in (("demo", "video", 16), ("demo", "audio", 8)):
        a = measure(
            tower_config(CONFIGS / f"{name}.yaml", modality, patch_dropout=0.0), batch, steps, device, peak
        )
        b = measure(
            tower_config(CONFIGS / f"{name}.yaml", modality, patch_dropout=0.5), batch, steps, device, peak
        )
        print(
            f"| {name} | {modality} | {batch} | {a['samples_s']:.1f} | {b['samples_s']:.1f} "
            f"| {b['samples_s'] / a['samples_s']:.2f}x | {a['gflop_step']:.2f} / {b['gflop_step']:.2f} |"
        )


def gpu_section(steps: int, dry_run: bool) -> None:
    device = torch.device("cpu" if dry_run else "cuda")
    if dry_run:
        cfg = tower_config(CONFIGS / "tiny.yaml", "video")
        peak, sheet, batches = matmul_peak(device, torch.float32, 512), None, (2,)
    else:
        cfg = tower_config(CONFIGS / "languagebind_vit_l14.yaml", "video")  # random weights, real shapes
        peak = matmul_peak(device, torch.bfloat16, 8192)
        name = torch.cuda.get_device_name()
        sheet = next((v for k, v in DATASHEET_BF16.items() if k in name), None)
        batches = (8, 16, 32)
    print(f"\n## GPU{' (dry run on CPU)' if dry_run else ''}\n\n{machine()}\n")
    print(
        f"measured bf16 matmul peak: {peak / 1e12:.1f} TFLOP/s"
        + (f" (datasheet {sheet / 1e12:.0f})" if sheet else "")
    )
    print(
        f"\nvideo tower: width {cfg.width}, {cfg.layers} layers, {cfg.num_frames} frames of {cfg.image_size[0]} px, "
        f"temporal attention, LoRA r={cfg.lora.r}, patch dropout {cfg.patch_dropout}, bf16 autocast, SDPA\n"
    )
    print(
        "| batch (clips) | grad ckpt | step s | clips/s | frames/s | vs open_clip L/14 (70 img/s A100) | MFU | peak mem GiB |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for batch in batches:
        for checkpointing in (False, True):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            torch.manual_seed(0)
            tower = ModalityTower(cfg, 768)
            tower.add_lora()
            tower.gradient_checkpointing = checkpointing
            tower.to(device).train()
            autocast = torch.autocast(device.type, dtype=torch.bfloat16)
            flops = step_flops(tower, input_for(cfg, 1, device), autocast) * batch
            try:
                seconds = time_steps(tower, input_for(cfg, batch, device), steps, autocast)
            except torch.OutOfMemoryError:
                print(f"| {batch} | {checkpointing} | out of memory | | | | | |")
                continue
            memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
            frames = batch * cfg.num_frames / seconds
            print(
                f"| {batch} | {checkpointing} | {seconds:.3f} | {batch / seconds:.1f} | {frames:.0f} "
                f"| {frames / OPEN_CLIP_L14_A100:.1f}x | {100 * flops / seconds / peak:.1f}% | {memory:.1f} |"
            )
            del tower


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case (after 2 warm-up)")
    parser.add_argument("--gpu", action="store_true", help="also run the CUDA section")
    parser.add_argument(
        "--gpu-dry-run", action="store_true", help="the GPU section's code on CPU, tiny tower"
    )
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU section")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.no_cpu:
        cpu_section(args.steps)
    if args.gpu_dry_run:
        gpu_section(2, dry_run=True)
    elif args.gpu:
        if not torch.cuda.is_available():
            sys.exit("--gpu: no CUDA device here")
        gpu_section(args.steps, dry_run=False)


if __name__ == "__main__":
    main()
