"""Model throughput: forward + backward samples/s and model FLOPs utilisation of the towers.

    python bench/bench_model.py                  # CPU: tiny and demo towers, patch-dropout speed-up
    python bench/bench_model.py --gpu            # + ViT-L/14 video tower (8 frames) on CUDA, bf16, SDPA
    python bench/bench_model.py --gpu-dry-run    # the GPU section's code on CPU with a tiny tower
    python bench/bench_model.py --direction      # demo tower: motion direction vs time_embedding_std

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


def direction_section(steps: int = 400, seeds: tuple[int, ...] = (0, 1)) -> None:
    """Can the demo's random video tower tell left/right/up/down apart, per frame-embedding init?"""
    from model import ClipLoss, LanguageBind, zero_shot_classify

    directions = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
    names = list(directions)

    def clip(name: str, g: torch.Generator, size: int = 64) -> torch.Tensor:
        side, (dy, dx) = size // 6, directions[name]
        video = torch.full((8, 3, size, size), -1.0)
        fixed = [int(v) for v in torch.randint(side, size - 2 * side, (2,), generator=g)]
        colour = torch.rand(3, 1, 1, generator=g) * 2 + 0.5
        for t in range(8):
            shift = (t / 7 - 0.5) * (size - 3 * side)
            y = int(size / 2 - side / 2 + dy * shift) if dy else fixed[0]
            x = int(size / 2 - side / 2 + dx * shift) if dx else fixed[1]
            video[t, :, y : y + side, x : x + side] = colour
        return video

    def batch(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randperm(4, generator=g).repeat(n // 4)
        return torch.stack([clip(names[i], g) for i in labels]), labels

    print("\n## Motion direction, demo video tower (4 directions, 8-clip batches, AdamW 1e-3)\n")
    print(
        "| time_embedding_std | seed | " + " | ".join(f"acc @{s}" for s in range(100, steps + 1, 100)) + " |"
    )
    print("|---|---:|" + "---:|" * (steps // 100))
    config = ModelConfig.load(CONFIGS / "demo.yaml")
    for std in (1.0, config.modalities["video"].width ** -0.5):
        for seed in seeds:
            video = config.modalities["video"].model_copy(update={"time_embedding_std": std})
            torch.manual_seed(seed)
            model = LanguageBind.from_config(config.model_copy(update={"modalities": {"video": video}}))
            opt = torch.optim.AdamW(model.optimizer_groups(1e-3, 0.05))
            loss_fn, captions = ClipLoss(), [f"a square moving {d}" for d in names]
            text = model.encode_text(captions)
            g, (held, held_labels) = (
                torch.Generator().manual_seed(seed + 1),
                batch(64, torch.Generator().manual_seed(99)),
            )
            accuracies = []
            for step in range(1, steps + 1):
                videos, labels = batch(8, g)
                model.train()
                out = model({"video": videos, "text_emb": text[labels]})
                loss = loss_fn(out["video"], out["text"], out["logit_scale"]["video"])
                opt.zero_grad()
                loss.backward()
                opt.step()
                model.clamp_logit_scale_()
                if step % 100 == 0:
                    probs = zero_shot_classify(model, "video", held, names, ["a square moving {}"])
                    accuracies.append((probs.argmax(1) == held_labels).float().mean().item())
            print(f"| {std:.3f} | {seed} | " + " | ".join(f"{a:.2f}" for a in accuracies) + " |", flush=True)


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
    parser.add_argument("--direction", action="store_true", help="the motion-direction learning check")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.no_cpu:
        cpu_section(args.steps)
    if args.direction:
        direction_section()
    if args.gpu_dry_run:
        gpu_section(2, dry_run=True)
    elif args.gpu:
        if not torch.cuda.is_available():
            sys.exit("--gpu: no CUDA device here")
        gpu_section(args.steps, dry_run=False)


if __name__ == "__main__":
    main()
