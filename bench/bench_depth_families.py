"""CPU frames/s of every depth family vidal reads, through each backend's own ``predict``.

    python bench/bench_depth_families.py [--batch 2] [--repeats 3] [--out bench/results/depth_families.json]

Real-size architectures with random weights (speed does not depend on the values): transformers'
GLPN-NYU, DPT-Large and Depth Anything V2 (small, large) with their released processors' settings, and
the original MiDaS release variants read by ``midas:`` (``stages.backends.midas``). Frames are
256x455, VIDAL's 16:9 probe frames; each figure is the median of ``--repeats`` timed ``predict`` calls
on a batch after one untimed call, with the 1-minute load average before and after beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_vision import REAL_DEPTH, depth_config  # noqa: E402

from stages.backends.depth import DepthModel, depth_kind_of, tiny_processor  # noqa: E402
from stages.backends.midas import MidasDepthModel, _empty_model, network_size  # noqa: E402
from stages.backends.midas_dpt import VARIANTS  # noqa: E402

FRAME = (256, 455)
CPU = torch.device("cpu")
MIDAS = ["dpt_swin2_tiny_256", "dpt_levit_224", "dpt_hybrid_384", "dpt_large_384", "dpt_beit_large_512"]


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Fill weights that were given memory but no values (no timm/transformers init: minutes on 2 cores)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.02) if p.dim() > 1 else p.fill_(1.0 if "norm" in name or "bn" in name else 0.0)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.fill_(1.0)
            elif name.endswith("running_mean"):
                b.zero_()
    return model.eval()


def hf_model(arch: str, kw: dict[str, Any]) -> DepthModel:
    from transformers import AutoModelForDepthEstimation, GLPNImageProcessor

    with torch.device("meta"):
        net = AutoModelForDepthEstimation.from_config(depth_config(arch, kw))
    net = randomise(net.to_empty(device="cpu"))
    processor = GLPNImageProcessor() if arch == "glpn" else tiny_processor(arch, small=False)
    return DepthModel(net, processor, depth_kind_of(net.config), CPU, None)


def input_size(model: Any) -> str:
    if isinstance(model, MidasDepthModel):
        return "x".join(map(str, network_size(model.variant, *FRAME)))
    frame = torch.zeros(3, *FRAME, dtype=torch.uint8)
    pixels = model.processor(images=[frame], return_tensors="pt", input_data_format="channels_first")
    return "x".join(map(str, pixels["pixel_values"].shape[-2:]))


def measure(name: str, model: Any, batch: int, repeats: int) -> dict[str, Any]:
    frames = [torch.randint(0, 256, (3, *FRAME), dtype=torch.uint8) for _ in range(batch)]
    load_before = os.getloadavg()[0]
    model.predict(frames[:1])  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict(frames)
        times.append(time.perf_counter() - start)
    row = {
        "model": name,
        "kind": model.kind,
        "input": input_size(model),
        "batch": batch,
        "frames_per_s": round(batch / statistics.median(times), 3),
        "load_avg_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", nargs="*", help="model names to run (default: all)")
    p.add_argument("--out", type=Path, default=REPO / "bench/results/depth_families.json")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    builders: dict[str, Any] = {
        f"hf {n}": (lambda a=a, kw=kw: hf_model(a, kw)) for n, (a, kw) in REAL_DEPTH.items()
    }
    for v in MIDAS:
        builders[f"midas {v}"] = lambda v=v: MidasDepthModel(
            randomise(_empty_model(VARIANTS[v])), "relative", CPU, None
        )
    rows = []
    for name, build in builders.items():
        if args.only and not any(o in name for o in args.only):
            continue
        rows.append(measure(name, build(), args.batch, args.repeats))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"frame": "x".join(map(str, FRAME)), "torch_threads": 2, "cpu_count": os.cpu_count()}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
