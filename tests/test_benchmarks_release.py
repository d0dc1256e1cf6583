"""Benchmarks on released LanguageBind checkpoints (small random ones in the official layout): a hub id
through the hub cache, offline, for the image tower, and an official depth directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.benchmarks import registry
from model.benchmarks.prompts import IMAGE_TEMPLATES
from tests import test_benchmarks_data as data
from tests.languagebind_ckpt import write_checkpoint, write_hub_cache

ROOT = Path(__file__).resolve().parents[1]


def cli(env_extra: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "model.eval", *args, "--no-progress", "--workers", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
    )


def test_image_benchmark_on_a_released_image_tower_by_hub_id(tmp_path):
    from model import LanguageBind, zero_shot_classify

    hub = tmp_path / "hub"
    write_hub_cache(hub, "LanguageBind/LanguageBind_Image", "image")
    root = data.build_imagenet(tmp_path / "imagenet")
    out = tmp_path / "r.json"
    proc = cli(
        {"HF_HUB_CACHE": str(hub)},
        "--checkpoint",
        "LanguageBind/LanguageBind_Image",
        "--benchmark",
        "imagenet",
        "--benchmark-root",
        str(root),
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (r,) = json.loads(out.read_text())
    assert (r["model"], r["modality"], r["n"], r["metrics"]["classes"]) == (
        "LanguageBind/LanguageBind_Image",
        "image",
        2,
        2,
    )
    model = LanguageBind.load("LanguageBind/LanguageBind_Image", cache_dir=hub)
    d = registry.get("imagenet").read(root)
    probs = zero_shot_classify(model, "image", d.items, d.classes, IMAGE_TEMPLATES)
    assert r["metrics"]["top1"] == pytest.approx(
        100 * float((probs.argmax(1) == torch.tensor(d.labels)).float().mean())
    )


def test_depth_benchmark_on_an_official_directory(tmp_path, capsys):
    from model.eval import main

    ckpt = write_checkpoint(tmp_path / "LanguageBind_Depth", "depth")
    root = data.build_nyud(tmp_path / "nyu")
    proc = cli({}, "--checkpoint", str(ckpt), "--benchmark", "NYU-D", "--benchmark-root", str(root))
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("nyud") and "top-1" in ln)
    assert "65.1" in line and "10.00" in line  # the paper's figure and chance (10 classes)
    rc = main(
        [
            "--checkpoint",
            str(ckpt),
            "--benchmark",
            "esc50",
            "--benchmark-root",
            str(data.build_esc50(tmp_path / "esc")),
        ]
    )
    assert rc == 2 and "needs a 'audio' tower" in capsys.readouterr().err
