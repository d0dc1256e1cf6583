"""README "Using the released LanguageBind weights": every block runs, offline, as written.

The hub ids the section names are served from a local ``huggingface_hub`` cache holding small random
checkpoints in the released layout; the files it names (clip.mp4, sound.wav, ...) and the shards it
trains on are made here. Commands run in that directory in order (the convert step uses the fine-tune's
export); the fine-tune gets CPU-sized overrides appended, nothing else changes.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile
from PIL import Image

from pipeline.synthetic import CONCEPTS, make_clip
from tests.languagebind_ckpt import RELEASED, write_hub_cache
from tests.test_data import write_concept_shards

ROOT = Path(__file__).resolve().parents[1]
TITLE = "## Using the released LanguageBind weights"
CPU = [
    "--max-steps",
    "2",
    "--set",
    "data.workers=0",
    "--set",
    "data.batch_size=4",
    "--set",
    "optim.accum_freq=1",
    "--set",
    "eval.final=false",
    "--set",
    "eval.every=0",
    "--set",
    "data.shuffle_buffer=8",
]


def section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(TITLE)
    end = text.find("\n## ", start + len(TITLE))
    return text[start : end if end > 0 else None]


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", section(), flags=re.S)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    work = tmp_path_factory.mktemp("readme_lb")
    for name in sorted(set(re.findall(r"LanguageBind/(LanguageBind_[\w.]+)", section()))):
        write_hub_cache(work / "hub", f"LanguageBind/{name}", RELEASED[name], seed=len(name))
    make_clip(work / "clip.mp4", CONCEPTS[1], seconds=2.0, fps=15, size=(160, 120), seed=1)
    t = np.arange(3 * 16000) / 16000
    soundfile.write(work / "sound.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(work / "depth.png"), rng.integers(300, 9000, size=(120, 160), dtype=np.uint16))
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(work / "thermal.jpg")
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(work / "photo.jpg")
    write_concept_shards(work / "shards", CONCEPTS[:12], per_concept=1, per_shard=4)
    (work / "configs").symlink_to(ROOT / "configs")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(work / "hub"),
        "PYTHONPATH": str(ROOT),
        "TOKENIZERS_PARALLELISM": "false",
    }
    return work, env


def run(args: list[str], work: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{shlex.join(args)}\n{done.stderr[-3000:]}"
    return done


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+(?:e[-+]?\d+)?", text)]


def test_the_python_blocks_run_and_print_what_they_say(workdir):
    work, env = workdir
    load, classify, modes = blocks("python")
    out = run([sys.executable, "-c", load], work, env).stdout
    assert "('video', 'audio', 'depth', 'infrared', 'image') languagebind" in out
    for modality in ("video", "audio", "depth", "infrared", "image"):
        line = next(x for x in out.splitlines() if x.startswith(modality + " "))
        values = numbers(line)
        assert len(values) == 2 and all(-1.0001 <= v <= 1.0001 for v in values), line
    probs = numbers(run([sys.executable, "-c", classify], work, env).stdout)
    assert len(probs) == 3 and abs(sum(probs) - 1) < 1e-3
    assert "(4, 3, 32, 32) tensor(True) tensor(True)" in run([sys.executable, "-c", modes], work, env).stdout


@pytest.mark.slow
def test_the_commands_fine_tune_and_convert_both_ways(workdir):
    work, env = workdir
    (commands,) = blocks("bash")
    lines = [shlex.split(line) for line in commands.strip().splitlines()]
    assert [line[:3] for line in lines] == [["python", "-m", "model.train"]] + [
        ["python", "-m", "model.convert"]
    ] * 2
    for args in lines:
        args = [sys.executable, *args[1:]] + (CPU if args[2] == "model.train" else [])
        run(args, work, env)
    from model import LanguageBind

    tuned = LanguageBind.load(work / "runs/train/languagebind_video/export")
    again = LanguageBind.load(work / "out/LanguageBind_Video_mine")  # vidal -> official -> vidal
    x = tuned.preprocess_input("video", work / "clip.mp4")[None]
    assert (tuned.encode("video", x) - again.encode("video", x)).abs().max() < 1e-5
    assert LanguageBind.load(work / "runs/lb").modalities == ("depth", "audio")
