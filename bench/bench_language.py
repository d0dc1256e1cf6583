"""Throughput of the language stages (caption, asr, enhance) and what the runner adds to them.

    python bench/bench_language.py --cpu [--out DIR]            # tiny models here + runner overhead
    python bench/bench_language.py --gpu --out DIR              # real-size architectures, random weights, CUDA
    python bench/bench_language.py --gpu --device cpu --quick   # a dry run of the GPU section on the CPU

CPU section: the stages' ``process()`` with the ``tiny`` models on synthetic videos (frames/s and
videos/s of caption, clips/s of asr, videos/s of enhance), the ``openai:`` client's requests/s
against a local chat-completions server answering after 50 ms (what concurrency buys), then the
runner's overhead for caption and enhance through ``bench/stage_overhead.py`` (plain loop vs the
stage on Ray, same batch size, two run lengths -> fixed start-up cost and marginal per-batch cost).

GPU section: BLIP-large (ViT-L/16 at 384 px + BERT-base decoder, the default frame captioner) with
random weights: frames/s of the model alone and of ``FrameCaptioner`` (CPU preprocessing included)
per batch size, 20 new tokens per caption; and Qwen2.5-VL-3B's architecture (random weights) for
the video caption: videos/s with 4 frames of 224x392 and 60 new tokens. Results go to
``DIR/language_gpu.json`` and ``DIR/language_gpu.md`` with the GPU's name.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.synthetic import CONCEPTS, render_frames, tone  # noqa: E402
from stages.base import RunContext  # noqa: E402

TINY_SETS = [
    "caption.frame_model=tiny",
    "caption.video_model=tiny",
    "caption.frame_max_new_tokens=12",
    "caption.video_max_new_tokens=24",
    "asr.model=tiny",
    "asr.max_new_tokens=24",
    "enhance.model=tiny",
    "enhance.response_format=text",
    "enhance.max_new_tokens=32",
]


def jpeg(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def video_rows(n: int, size: tuple[int, int] = (170, 128)) -> list[dict[str, Any]]:
    """``n`` synthetic videos as the probe/discover stages leave them: 8 JPEG frames, title, hashtags, audio."""
    from contracts.encodings import encode_flac

    rows = []
    for i in range(n):
        c = CONCEPTS[i % len(CONCEPTS)]
        audio = (tone(c, 2.0, 16_000) * 32767).astype(np.int16)
        rows.append(
            {
                "video_id": f"v{i}",
                "frames": [jpeg(f) for f in render_frames(c, n_frames=8, size=size, seed=i)],
                "title": c.title,
                "hashtags": c.hashtags,
                "ofa": None,
                "mplug": None,
                "audio": encode_flac(audio, 16_000),
                "has_audio": True,
                "description": None,
                "raw": None,
                "asr": None,
                "polish_mplug": None,
                "sound_mplug": None,
            }
        )
    return rows


def timed_process(stage: Any, rows: list[dict[str, Any]], batch: int, repeat: int = 2) -> float:
    """Best-of-``repeat`` seconds for ``process()`` over ``rows`` in batches (after one warm-up batch)."""
    stage.process(pa.Table.from_pylist(rows[:batch]))
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for s in range(0, len(rows), batch):
            stage.process(pa.Table.from_pylist(rows[s : s + batch]))
        best = min(best, time.perf_counter() - t0)
    return best


def cpu_stage_throughput(n_videos: int) -> dict[str, Any]:
    """videos/s (and frames/s) of each language stage's process() with the tiny models, one thread."""
    from pipeline.config import load_config

    torch.set_num_threads(1)  # what one Ray actor with num_cpus=1 gets
    cfg = load_config(REPO / "configs" / "demo.yaml", TINY_SETS)
    rows = video_rows(n_videos)
    out: dict[str, Any] = {"videos": n_videos, "torch_threads": 1}
    from stages.asr import AsrStage
    from stages.caption import CaptionStage
    from stages.enhance import EnhanceStage

    for name, cls, extra in (
        ("caption_frames_only", CaptionStage, {"video_model": "none"}),
        ("caption", CaptionStage, {}),
        ("asr", AsrStage, {}),
        ("enhance", EnhanceStage, {}),
    ):
        section = getattr(cfg, name.split("_")[0]).model_copy(update=extra)
        stage = cls(section, RunContext(root=tempfile.mkdtemp()))
        t0 = time.perf_counter()
        stage.setup()
        setup_s = time.perf_counter() - t0
        secs = timed_process(stage, rows, section.batch_size)
        out[name] = {
            "batch_size": section.batch_size,
            "setup_s": round(setup_s, 2),
            "seconds": round(secs, 2),
            "videos_per_s": round(n_videos / secs, 2),
            "ms_per_batch": round(1000 * secs * section.batch_size / n_videos, 1),
        }
        if name.startswith("caption"):
            out[name]["frames_per_s"] = round(8 * n_videos / secs, 1)
    return out


def openai_concurrency(requests: int = 64, latency_s: float = 0.05) -> dict[str, Any]:
    """requests/s of the openai: client against a local server that answers after ``latency_s``."""
    from stages.backends.openai_client import OpenAIChatClient
    from tests.test_llm_openai import MSG, ChatServer

    server = ChatServer()
    server.delay_s = latency_s
    out = {"latency_s": latency_s, "requests": requests}
    try:
        for conc in (1, 4, 16):
            client = OpenAIChatClient(server.base_url, "m", api_key_env=None, concurrency=conc)
            t0 = time.perf_counter()
            res = client.complete([MSG] * requests)
            dt = time.perf_counter() - t0
            client.close()
            assert all(r.text for r in res)
            out[f"concurrency_{conc}"] = round(requests / dt, 1)
    finally:
        server.close()
    return out


def runner_overhead(rows: tuple[int, int], work: Path, batch: int, repeat: int = 1) -> list[dict[str, Any]]:
    """Plain loop vs the runner on Ray for caption and enhance (``bench/stage_overhead.py``)."""
    from bench.stage_overhead import build_source, measure
    from pipeline.config import load_config
    from pipeline.runner import run_stage

    config = str(REPO / "configs" / "demo.yaml")
    sets = [
        *TINY_SETS,
        "run.num_cpus=2",
        f"caption.batch_size={batch}",
        f"enhance.batch_size={batch}",
        "run.rows_per_part=64",
    ]
    source = build_source("caption", config, sets, work / "src", videos=16)
    # the enhance input also needs captions: run caption once over the source
    run_stage(load_config(config, [*sets, f"run.root={source}", "run.demo_media="]), "caption")
    return [
        measure(s, sets, rows, config, source_root=str(source), work_dir=str(work / s), repeat=repeat)
        for s in ("caption", "enhance")
    ]


# -- GPU ---------------------------------------------------------------------------------------------
def blip_large(device: torch.device, dtype: torch.dtype, quick: bool) -> tuple[Any, Any]:
    """BLIP-large's architecture with random weights, and a processor with a same-size vocab."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    vocab = {
        t: i
        for i, t in enumerate(
            ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + [f"w{i}" for i in range(30524 - 6)]
        )
    }
    tok = BertTokenizer(vocab=vocab)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    side = 96 if quick else 384
    vision = dict(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        image_size=side,
        patch_size=16,
    )
    text = dict(vocab_size=30524, bos_token_id=5, pad_token_id=0, sep_token_id=3, eos_token_id=3)
    if quick:
        vision.update(num_hidden_layers=2)
        text.update(num_hidden_layers=2)
    with torch.device(device):
        model = (
            BlipForConditionalGeneration(BlipConfig(vision_config=vision, text_config=text)).to(dtype).eval()
        )
    return model, BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": side, "width": side}), tokenizer=tok
    )


def gpu_frame_captioner(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    from contracts.backends import resolve_dtype
    from stages.backends.captioners import FrameCaptioner, ImageTextModel

    dtype = resolve_dtype(device, "auto") or torch.float32
    model, processor = blip_large(device, dtype, quick)
    cap = FrameCaptioner(
        ImageTextModel(model, processor, "blip-large-random", device, dtype), max_new_tokens=20
    )
    frames = [
        Image.open(io.BytesIO(jpeg(f))).convert("RGB")
        for f in render_frames(CONCEPTS[0], n_frames=8, size=(455, 256), seed=0)
    ]
    out = []
    for bs in (4, 8) if quick else (16, 32, 64, 128):
        images = (frames * (bs // 8 + 1))[:bs]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        inputs = cap.m.to_device(processor(images=images, return_tensors="pt"))
        gen = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False)
        with torch.inference_mode():
            model.generate(**inputs, **gen)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        reps = 2 if quick else 3
        with torch.inference_mode():
            for _ in range(reps):
                model.generate(**inputs, **gen)
        sync(device)
        model_fps = bs * reps / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(reps):
            cap(images)  # PIL in, strings out: CPU preprocessing and decoding included
        sync(device)
        out.append(
            {
                "batch": bs,
                "model_frames_per_s": round(model_fps, 1),
                "captioner_frames_per_s": round(bs * reps / (time.perf_counter() - t0), 1),
                "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)
                if device.type == "cuda"
                else None,
            }
        )
    return out


def gpu_video_captioner(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    """Qwen2.5-VL-3B's architecture (random weights): videos/s, 4 frames of 224x392, 60 new tokens."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from contracts.backends import resolve_dtype

    dtype = resolve_dtype(device, "auto") or torch.float32
    text = dict(
        hidden_size=2048,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        intermediate_size=11008,
        vocab_size=151936,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    )
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048)
    if quick:
        text.update(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            vocab_size=152000,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        )
        vision.update(
            depth=2,
            hidden_size=64,
            intermediate_size=128,
            num_heads=4,
            out_hidden_size=64,
            fullatt_block_indexes=[1],
        )
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(cfg).to(dtype).eval()
    frames, (h, w), prompt_len, new = 4, (224, 392), 150, 60
    gh, gw = h // 14, w // 14
    per_image = gh * gw // 4
    out = []
    for bs in (1, 2) if quick else (4, 8, 16):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        ids = []
        for _ in range(bs):
            row = list(np.random.randint(1000, 100000, prompt_len // 2))
            for _ in range(frames):
                row += (
                    [cfg.vision_start_token_id] + [cfg.image_token_id] * per_image + [cfg.vision_end_token_id]
                )
            ids.append(row + list(np.random.randint(1000, 100000, prompt_len // 2)))
        inputs = {
            "input_ids": torch.tensor(ids, device=device),
            "attention_mask": torch.ones(len(ids), len(ids[0]), dtype=torch.long, device=device),
            "pixel_values": torch.randn(bs * frames * gh * gw, 3 * 2 * 14 * 14, device=device, dtype=dtype),
            "image_grid_thw": torch.tensor([[1, gh, gw]] * (bs * frames), device=device),
        }
        gen = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False)
        with torch.inference_mode():
            model.generate(**inputs, **gen)
            sync(device)
            t0 = time.perf_counter()
            model.generate(**inputs, **gen)
            sync(device)
        dt = time.perf_counter() - t0
        out.append(
            {
                "batch": bs,
                "videos_per_s": round(bs / dt, 2),
                "tokens_in_per_video": len(ids[0]),
                "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)
                if device.type == "cuda"
                else None,
            }
        )
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def gpu_section(device: torch.device, quick: bool, out_dir: Path) -> dict[str, Any]:
    """Both GPU measurements; the files are rewritten after each, so a run cut short keeps the first."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    result: dict[str, Any] = {"device": name, "torch": torch.__version__, "quick": quick}
    result["frame_captioner_blip_large"] = gpu_frame_captioner(device, quick)
    write_gpu(result, out_dir)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    result["video_captioner_qwen2_5_vl_3b"] = gpu_video_captioner(device, quick)
    best = max(r["captioner_frames_per_s"] for r in result["frame_captioner_blip_large"])
    vbest = max(r["videos_per_s"] for r in result["video_captioner_qwen2_5_vl_3b"])
    result["gpu_hours_10M_videos"] = {
        "frame_captions": round(10_000_000 * 8 / best / 3600, 1),
        "video_captions": round(10_000_000 / vbest / 3600, 1),
    }
    write_gpu(result, out_dir)
    return result


def write_gpu(result: dict[str, Any], out_dir: Path) -> None:
    """``language_gpu.json`` and ``language_gpu.md`` from what has been measured so far."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "language_gpu.json").write_text(json.dumps(result, indent=1))
    precision = "fp32" if result["device"].startswith("cpu") else "bf16/fp16"
    lines = [
        f"GPU: {result['device']} (torch {result['torch']}), random weights, {precision}",
        "",
        "| BLIP-large batch | model frames/s | FrameCaptioner frames/s | peak GB |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['batch']} | {r['model_frames_per_s']} | {r['captioner_frames_per_s']} | {r['peak_mem_gb']} |"
        for r in result["frame_captioner_blip_large"]
    ]
    if "video_captioner_qwen2_5_vl_3b" in result:
        lines += [
            "",
            "| Qwen2.5-VL-3B batch | videos/s (4 frames, 60 tokens) | tokens in | peak GB |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['batch']} | {r['videos_per_s']} | {r['tokens_in_per_video']} | {r['peak_mem_gb']} |"
            for r in result["video_captioner_qwen2_5_vl_3b"]
        ]
        lines += ["", f"GPU-hours for 10M videos: {result['gpu_hours_10M_videos']}"]
    (out_dir / "language_gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="tiny-model throughput and runner overhead")
    p.add_argument("--gpu", action="store_true", help="real-size architectures on CUDA")
    p.add_argument("--device", default="cuda", help="device for --gpu (cpu for a dry run)")
    p.add_argument("--quick", action="store_true", help="scaled-down models and batches (a dry run)")
    p.add_argument("--videos", type=int, default=32, help="videos for the CPU throughput runs")
    p.add_argument("--rows", type=int, nargs=2, default=(32, 128), help="run lengths for the runner overhead")
    p.add_argument(
        "--batch-size", type=int, default=32, help="caption/enhance batch size for the runner overhead"
    )
    p.add_argument("--no-overhead", action="store_true", help="skip the runner-overhead runs")
    p.add_argument(
        "--repeat", type=int, default=1, help="runs per point of the runner overhead (the fastest counts)"
    )
    p.add_argument("--out", default=str(REPO / "bench" / "out"))
    a = p.parse_args(argv)
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if a.gpu:
        device = torch.device(a.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            print("no CUDA device visible: skipping the GPU section (use --device cpu --quick for a dry run)")
            return 0
        gpu_section(device, a.quick, out_dir)
    if a.cpu:
        result: dict[str, Any] = {
            "stages": cpu_stage_throughput(a.videos),
            "openai_client": openai_concurrency(),
        }
        print(json.dumps(result, indent=1), flush=True)
        if not a.no_overhead:
            from bench.stage_overhead import as_markdown

            result["overhead"] = runner_overhead(
                tuple(a.rows), Path(tempfile.mkdtemp(prefix="lang-overhead-")), a.batch_size, a.repeat
            )
            for r in result["overhead"]:
                print(as_markdown(r), "\n", flush=True)
        (out_dir / "language_cpu.json").write_text(json.dumps(result, indent=1))
    if not (a.cpu or a.gpu):
        p.error("choose --cpu and/or --gpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
