"""Throughput of the depth and infrared stages.

    python bench/bench_vision.py --cpu                  # tiny models on this machine + runner overhead
    python bench/bench_vision.py --gpu --out DIR        # real-size architectures, random weights, CUDA
    python bench/bench_vision.py --gpu --device cpu --quick   # a dry run of the GPU section on the CPU

CPU section: frames/s of each stage's ``process()`` with the ``tiny`` models on synthetic frames (short
side 128 as in the demo, and 256 as VIDAL), split into decode / model / encode, then the runner
overhead of both stages through ``bench/stage_overhead.py``.

GPU section (needs CUDA unless ``--device cpu``): the real-size architectures with random weights under
bf16 autocast: GLPN-NYU (MiT-b4), DPT-large, Depth Anything V2 small and large, and sRGB-TIR's MUNIT at
a 400 px short side, on 256x455 frames (VIDAL's 16:9 frames). For each batch size: frames/s of the
model alone, frames/s with the GPU pre/post-processing (``predict`` / ``translate``), peak GPU memory;
then frames/s of the whole ``process()`` (nvJPEG decode, model, PNG/JPEG encode on the CPU) at the
best batch size, and the GPU-hours to do 10M videos x 8 frames. Results go to ``DIR/vision_gpu.json``
and ``DIR/vision_gpu.md``, with the GPU's name.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from contracts.encodings import encode_depth_png, encode_jpeg  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.synthetic import CONCEPTS, render_frames  # noqa: E402
from stages.backends.batching import autocast, decode_frames  # noqa: E402
from stages.base import RunContext  # noqa: E402
from stages.depth import DepthStage, to_millimetres  # noqa: E402
from stages.infrared import InfraredStage  # noqa: E402

VIDEOS, FRAMES = 10_000_000, 8


def synthetic_jpegs(n: int, h: int, w: int) -> list[bytes]:
    """``n`` JPEG frames of moving shapes (the demo's synthetic clips) at h x w."""
    out = []
    for i in range(n):
        frame = render_frames(CONCEPTS[i % len(CONCEPTS)], n_frames=1, size=(w, h), seed=i)[0]
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def make_stage(stage: str, overrides: list[str]) -> Any:
    cfg = load_config(None, overrides)
    cls = {"depth": DepthStage, "infrared": InfraredStage}[stage]
    s = cls(getattr(cfg, stage), RunContext(root=tempfile.gettempdir()))
    s.setup()
    return s


def table_of(jpegs: list[bytes], videos: int) -> pa.Table:
    rows = [[jpegs[(v * FRAMES + j) % len(jpegs)] for j in range(FRAMES)] for v in range(videos)]
    return pa.table({"video_id": [f"bench-{v}" for v in range(videos)], "frames": rows})


def timed(fn: Callable[[], Any], min_s: float = 1.0, min_n: int = 2, sync: bool = False) -> float:
    """Seconds per call: one warm-up call, then calls until ``min_s`` and ``min_n`` are reached."""
    fn()
    if sync:
        torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while n < min_n or time.perf_counter() - t0 < min_s:
        fn()
        n += 1
    if sync:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


# -- CPU ---------------------------------------------------------------------------------------------
def profile(stage: str, extra: list[str], jpegs: list[bytes], table: pa.Table, quick: bool) -> dict[str, Any]:
    """process() frames/s of one stage config, and its decode / model / encode costs per frame."""
    s = make_stage(stage, [f"{stage}.device=cpu", f"{stage}.encode_threads=1", *extra])
    total = timed(lambda: s.process(table), min_s=0 if quick else 2)
    cpu = torch.device("cpu")
    frames = decode_frames(jpegs[:16], cpu)
    decode = timed(lambda: decode_frames(jpegs[:16], cpu), min_s=0.3) / 16
    if stage == "depth":
        model = timed(lambda: s.net.predict(frames), min_s=0 if quick else 1) / 16
        mm = to_millimetres(s.net.predict(frames[:1]), s.net.kind)[0].numpy().astype(np.uint16)
        encode = timed(lambda: encode_depth_png(mm, s.config.png_compression), min_s=0.3)
    else:
        keys = [f"k/{i}" for i in range(16)]
        model = timed(lambda: s.net.translate(frames, keys), min_s=0 if quick else 1) / 16
        ir = s.net.translate(frames[:1], keys[:1])[0].numpy()
        encode = timed(lambda: encode_jpeg(ir), min_s=0.3)
    h, w = frames[0].shape[1:]
    return {
        "stage": stage,
        "model": s.config.model,
        "frame": f"{h}x{w}",
        "frames_per_s": round(table.num_rows * FRAMES / total, 1),
        "decode_ms": round(decode * 1e3, 2),
        "model_ms": round(model * 1e3, 2),
        "encode_ms": round(encode * 1e3, 2),
    }


def cpu_stage_rows(quick: bool) -> list[dict[str, Any]]:
    """process() frames/s of each stage with tiny models, with a decode / model / encode split."""
    torch.set_num_threads(1)  # what a 1-CPU actor gets
    cases = [
        ("depth", ["depth.model=tiny"]),
        ("depth", ["depth.model=tiny:dpt"]),
        ("depth", ["depth.model=tiny:depth_anything"]),
        ("infrared", ["infrared.model=tiny", "infrared.short_side=null"]),
        ("infrared", ["infrared.model=tiny:cyclegan", "infrared.short_side=null"]),
    ]
    rows = []
    for short in (128, 256):
        jpegs = synthetic_jpegs(32, short, round(short * 16 / 9))
        table = table_of(jpegs, 4 if quick else 16)
        for stage, extra in cases:
            rows.append(profile(stage, extra, jpegs, table, quick))
            print(rows[-1], flush=True)
    return rows


def cpu_section(
    out: Path, quick: bool, profile_stages: bool = True, rows: tuple[int, int] | None = None
) -> dict[str, Any]:
    from bench.stage_overhead import as_markdown, build_source, measure
    from pipeline.runner import init_ray

    result: dict[str, Any] = {"stages": cpu_stage_rows(quick) if profile_stages else [], "overhead": []}
    config = str(REPO / "configs" / "demo.yaml")
    common = ["run.num_cpus=2", "probe.short_side=128"]
    init_ray("local", 2)
    source = build_source("depth", config, common, out / "source", videos=16)  # probe output, shared
    rows = rows or ((16, 48) if quick else (32, 160))
    for stage, extra in [
        ("depth", ["depth.model=tiny"]),
        ("infrared", ["infrared.model=tiny", "infrared.short_side=null"]),
    ]:
        r = measure(
            stage,
            [*extra, *common],
            rows=rows,
            config=config,
            source_root=str(source),
            work_dir=str(out / f"overhead-{stage}"),
            repeat=1 if quick else 2,
        )
        print(as_markdown(r), flush=True)
        result["overhead"].append(r)
    return result


# -- GPU ---------------------------------------------------------------------------------------------
# Published hyper-parameters of the released checkpoints (the weights here are random).
# fmt: off
REAL_DEPTH = {
    "GLPN-NYU (MiT-b4)": ("glpn", {"depths": [3, 8, 27, 3], "hidden_sizes": [64, 128, 320, 512],
                                   "num_attention_heads": [1, 2, 5, 8], "decoder_hidden_size": 64}),
    "DPT-large": ("dpt", {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                          "intermediate_size": 4096, "backbone_out_indices": [5, 11, 17, 23],
                          "neck_hidden_sizes": [256, 512, 1024, 1024]}),
    "Depth Anything V2 small": ("depth_anything", {"backbone": (384, 12, 6, [3, 6, 9, 12]), "fusion_hidden_size": 64,
                                                   "neck_hidden_sizes": [48, 96, 192, 384]}),
    "Depth Anything V2 large": ("depth_anything", {"backbone": (1024, 24, 16, [5, 12, 18, 24]),
                                                   "fusion_hidden_size": 256,
                                                   "neck_hidden_sizes": [256, 512, 1024, 1024]}),
}
# fmt: on


def depth_config(arch: str, kw: dict[str, Any]) -> Any:
    """A transformers config of ``arch`` with the given hyper-parameters."""
    from transformers import DepthAnythingConfig, Dinov2Config, DPTConfig, GLPNConfig

    if arch == "depth_anything":
        hidden, layers, heads, outs = kw["backbone"]
        backbone = Dinov2Config(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            patch_size=14,
            image_size=518,
            reshape_hidden_states=False,
            out_indices=outs,
        )
        rest = {k: v for k, v in kw.items() if k != "backbone"}
        return DepthAnythingConfig(
            backbone_config=backbone, reassemble_hidden_size=hidden, patch_size=14, **rest
        )
    return {"glpn": GLPNConfig, "dpt": DPTConfig}[arch](**kw)


def gflop_per_frame(
    build: Callable[[], torch.nn.Module],
    call: Callable[[torch.nn.Module, torch.Tensor], Any],
    shape: tuple[int, ...],
) -> float:
    """Matmul/conv GFLOP of one frame, counted on the meta device (no memory, no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model, x = build().eval(), torch.empty(1, 3, *shape)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        call(model, x)
    return round(counter.get_total_flops() / 1e9, 1)


def forward_of(
    forward: Callable[[torch.Tensor], Any],
    one: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype,
    channels_last: bool = False,
) -> Callable[[int], Any]:
    """``bs -> forward(batch)`` under autocast, on ``one`` repeated to ``bs`` (built once per size, untimed)."""
    batches: dict[int, torch.Tensor] = {}
    layout = torch.channels_last if channels_last else torch.contiguous_format

    def run(bs: int) -> Any:
        if bs not in batches:
            batches[bs] = one.repeat(bs, 1, 1, 1).contiguous(memory_format=layout)
        with torch.inference_mode(), autocast(device, dtype):
            return forward(batches[bs])

    return run


def sweep(
    fn: Callable[[int], Any], sizes: list[int], device: torch.device, quick: bool
) -> list[dict[str, Any]]:
    """frames/s and peak memory of ``fn(batch_size)`` for each size, stopping at the first OOM."""
    cuda = device.type == "cuda"
    out = []
    for bs in sizes:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            per_call = timed(
                lambda bs=bs: fn(bs), min_s=0 if quick else 1.5, min_n=1 if quick else 3, sync=cuda
            )
        except torch.OutOfMemoryError:
            out.append({"batch": bs, "oom": True})
            break
        out.append(
            {
                "batch": bs,
                "frames_per_s": round(bs / per_call, 1),
                "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None,
            }
        )
        print(bs, out[-1], flush=True)
    return out


def measure_model(
    name: str,
    net: torch.nn.Module,
    one: torch.Tensor,
    forward: Callable[[torch.Tensor], Any],
    pre_post: Callable[[int], Any],
    gflop: float,
    device: torch.device,
    quick: bool,
    sizes: list[int],
    channels_last: bool = False,
) -> dict[str, Any]:
    """One model's sweeps: the network alone on preprocessed input, and with the backend's pre/post."""
    return {
        "model": name,
        "params_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 1),
        "input": "x".join(map(str, one.shape[-2:])),
        "gflop_per_frame": gflop,
        "model_only": sweep(
            forward_of(forward, one, device, torch.bfloat16, channels_last), sizes, device, quick
        ),
        "with_pre_post": sweep(pre_post, sizes, device, quick),
    }


def gpu_section(device: torch.device, quick: bool, work: Path, sizes: list[int]) -> dict[str, Any]:
    from transformers import AutoModelForDepthEstimation

    from stages.backends.depth import DepthModel, tiny_config, tiny_processor
    from stages.backends.infrared import InfraredModel
    from stages.backends.munit import TINY_ARCH, MunitArch, MunitGenerator, MunitTranslator

    h, w = (64, 112) if quick else (256, 455)
    jpegs = synthetic_jpegs(32, h, w)
    frames = [f.to(device) for f in decode_frames(jpegs, torch.device("cpu"))]
    batch_of = lambda bs: [frames[i % len(frames)] for i in range(bs)]  # noqa: E731
    cuda = device.type == "cuda"
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if cuda else str(device),
        "frame": f"{h}x{w}",
        "dtype": "bf16",
        "models": [],
    }
    if cuda:
        results["gpu_jpeg_decode"] = gpu_decode_check(jpegs, device)
    for name, (arch, kw) in REAL_DEPTH.items():
        config, processor = (
            (tiny_config(arch) if quick else depth_config(arch, kw)),
            tiny_processor(arch, small=quick),
        )
        with torch.device(device):
            model = AutoModelForDepthEstimation.from_config(config).eval()
        net = DepthModel(model, processor, "metric", device, torch.bfloat16)
        one = processor(
            images=batch_of(1), return_tensors="pt", device=device, input_data_format="channels_first"
        )
        one = one["pixel_values"]
        gflop = gflop_per_frame(
            lambda c=config: AutoModelForDepthEstimation.from_config(c),
            lambda m, x: m(pixel_values=x),
            tuple(one.shape[-2:]),
        )
        entry = measure_model(
            name,
            model,
            one,
            lambda b, m=model: m(pixel_values=b).predicted_depth,
            lambda bs, n=net: n.predict(batch_of(bs)),
            gflop,
            device,
            quick,
            sizes,
        )
        if arch == "glpn" or name.endswith("small"):  # VIDAL's model and the light alternative
            model.save_pretrained(work / arch)
            processor.save_pretrained(work / arch)
            entry["stage"] = stage_rate("depth", f"hf:{work / arch}", entry, jpegs, device, quick)
        results["models"].append(finish(entry))
        del model, net
    arch = TINY_ARCH if quick else MunitArch()
    with torch.device(device):
        gens = {"a": MunitGenerator(arch), "b": MunitGenerator(arch)}
    short = 64 if quick else 400  # sRGB-TIR's training size; smaller only for a dry run
    net = InfraredModel(
        MunitTranslator(gens["b"], gens["a"]).eval(),
        device,
        torch.bfloat16,
        arch.style_dim,
        4,
        short_side=short,
    )
    one = torch.rand(1, 3, short, round(short * w / h / 4) * 4, device=device) * 2 - 1
    gflop = gflop_per_frame(
        lambda: MunitTranslator(MunitGenerator(arch), MunitGenerator(arch)),
        lambda m, t: m(t, torch.empty(1, arch.style_dim, device="meta")),
        tuple(one.shape[-2:]),
    )
    keys = [f"v/{i}" for i in range(max(sizes))]
    entry = measure_model(
        f"MUNIT sRGB-TIR (short side {short})",
        net.net,
        one,
        lambda b: net.net(b, torch.randn(len(b), arch.style_dim, device=device)),
        lambda bs: net.translate(batch_of(bs), keys[:bs]),
        gflop,
        device,
        quick,
        sizes,
        channels_last=net.channels_last,
    )
    ckpt = work / "translation_weights.pt"
    torch.save({k: {n: t.cpu() for n, t in g.state_dict().items()} for k, g in gens.items()}, ckpt)
    extra = [
        f"infrared.short_side={short}",
        *(f"infrared.munit.{k}={v}" for k, v in arch.model_dump().items()),
    ]
    entry["stage"] = stage_rate("infrared", f"munit:{ckpt}", entry, jpegs, device, quick, extra)
    results["models"].append(finish(entry))
    return results


def gpu_decode_check(jpegs: list[bytes], device: torch.device) -> dict[str, Any]:
    """Whether batched nvJPEG decoding works here, and its cost per frame against the CPU."""
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gpu = timed(
                lambda: decode_jpeg(data, mode=ImageReadMode.RGB, device=device), min_s=0.5, sync=True
            )
    except RuntimeError as e:
        return {"works": False, "error": str(e)[:200]}
    cpu = timed(lambda: decode_frames(jpegs, torch.device("cpu")), min_s=0.5)
    return {
        "works": True,
        "gpu_ms_per_frame": round(gpu / len(jpegs) * 1e3, 3),
        "cpu_ms_per_frame": round(cpu / len(jpegs) * 1e3, 3),
    }


def stage_rate(
    stage: str,
    model: str,
    entry: dict[str, Any],
    jpegs: list[bytes],
    device: torch.device,
    quick: bool,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """frames/s of the whole process() at the best batch size found, with 1 and 4 encoding threads."""
    best = max((r for r in entry["with_pre_post"] if "frames_per_s" in r), key=lambda r: r["frames_per_s"])[
        "batch"
    ]
    table = table_of(jpegs, 2 if quick else 32)
    out: dict[str, Any] = {"model_batch": best}
    for threads in (1, 4):
        s = make_stage(
            stage,
            [
                f"{stage}.model={model}",
                f"{stage}.device={device}",
                f"{stage}.precision=bf16",
                f"{stage}.model_batch={best}",
                f"{stage}.encode_threads={threads}",
                *(extra or []),
            ],
        )
        per_call = timed(
            lambda s=s: s.process(table),
            min_s=0 if quick else 3,
            min_n=1 if quick else 2,
            sync=device.type == "cuda",
        )
        out[f"frames_per_s_{threads}_encode_threads"] = round(table.num_rows * FRAMES / per_call, 1)
        print(stage, threads, out, flush=True)
    return out


def finish(entry: dict[str, Any]) -> dict[str, Any]:
    """Best frames/s and the projected GPU-hours for 10M videos x 8 frames."""
    for key in ("model_only", "with_pre_post"):
        ok = [r for r in entry[key] if "frames_per_s" in r]
        if ok:
            best = max(ok, key=lambda r: r["frames_per_s"])
            entry[f"{key}_best"] = best
            entry[f"{key}_gpu_hours_10M"] = round(VIDEOS * FRAMES / best["frames_per_s"] / 3600, 1)
            entry[f"{key}_tflops"] = round(best["frames_per_s"] * entry["gflop_per_frame"] / 1e3, 1)
    return entry


def gpu_markdown(r: dict[str, Any]) -> str:
    lines = [
        f"GPU: {r['device']}; frames {r['frame']}; random weights; {r['dtype']} autocast.",
        "",
        "| model | params (M) | model input | batch | model frames/s | with GPU pre/post frames/s | peak GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in r["models"]:
        for a, b in zip_longest(m["model_only"], m["with_pre_post"], fillvalue={}):
            fa = "OOM" if a.get("oom") else a.get("frames_per_s", "")
            fb = "OOM" if b.get("oom") else b.get("frames_per_s", "")
            lines.append(
                f"| {m['model']} | {m['params_m']} | {m['input']} | {a.get('batch', b.get('batch'))} | "
                f"{fa} | {fb} | {b.get('peak_gib', a.get('peak_gib', ''))} |"
            )
    lines += [
        "",
        "| model | GFLOP/frame | best model frames/s (TFLOP/s) | GPU-hours, 10M videos x 8 frames "
        "(model) | (with pre/post) | whole stage frames/s (1 / 4 encode threads) |",
        "|---|---|---|---|---|---|",
    ]
    for m in r["models"]:
        st = m.get("stage", {})
        lines.append(
            f"| {m['model']} | {m['gflop_per_frame']} | {m.get('model_only_best', {}).get('frames_per_s')} "
            f"({m.get('model_only_tflops')}) | "
            f"{m.get('model_only_gpu_hours_10M')} | {m.get('with_pre_post_gpu_hours_10M')} | "
            f"{st.get('frames_per_s_1_encode_threads', '')} / {st.get('frames_per_s_4_encode_threads', '')} |"
        )
    if "gpu_jpeg_decode" in r:
        lines += ["", f"nvJPEG batched decode: {r['gpu_jpeg_decode']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="tiny models on the CPU, and the runner overhead")
    p.add_argument("--gpu", action="store_true", help="real-size architectures on CUDA (or --device)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 16, 32, 64, 128], help="GPU batch sizes")
    p.add_argument("--quick", action="store_true", help="small frames and batches: checks the script runs")
    p.add_argument("--overhead-only", action="store_true", help="with --cpu: skip the per-stage profiles")
    p.add_argument("--rows", type=int, nargs=2, help="run lengths of the runner overhead (default 32 160)")
    p.add_argument("--out", default=str(REPO / "bench" / "out"), help="where JSON / Markdown results go")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.cpu:
        r = cpu_section(
            out, a.quick, profile_stages=not a.overhead_only, rows=tuple(a.rows) if a.rows else None
        )
        (out / "vision_cpu.json").write_text(json.dumps(r, indent=1))
    if a.gpu:
        device = torch.device(a.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            print("no CUDA device: skipping the GPU section (use --device cpu --quick for a dry run)")
            return 0
        with tempfile.TemporaryDirectory() as work:
            r = gpu_section(device, a.quick, Path(work), [1, 2] if a.quick else a.sizes)
        (out / "vision_gpu.json").write_text(json.dumps(r, indent=1))
        (out / "vision_gpu.md").write_text(gpu_markdown(r) + "\n")
        print(gpu_markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
