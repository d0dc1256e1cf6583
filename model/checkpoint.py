"""Training checkpoints: atomic, resumable, and loadable for evaluation and export.

A run directory (``--out``) holds::

    train_config.yaml          the resolved config
    base/                      the model at step 0 (``LanguageBind.save``): config and weights that
                               never change during training (frozen towers; a non-tiny text encoder
                               is rebuilt from its name)
    checkpoints/step_0000100/  weights.safetensors (trainable parameters, or all with full_checkpoint),
                               state.pt (optimizer, scheduler, RNG and data position of every rank),
                               meta.json (step, samples seen, epoch, metrics, config)
    checkpoints/latest         the name of the newest complete checkpoint
    export/                    a plain inference model (LoRA merged), ``LanguageBind.load``-able

A checkpoint is written under a temporary name and renamed when complete, so a killed run never
leaves a half checkpoint that ``--resume latest`` would trust.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from contracts.config_io import ConfigError

BASE_DIR, CKPT_DIR, LATEST, EXPORT_DIR = "base", "checkpoints", "latest", "export"
WEIGHTS, STATE, META = "weights.safetensors", "state.pt", "meta.json"


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy and torch (CPU and CUDA) RNG states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def prepare_out(out: Path, fresh: bool, resume: str | None) -> None:
    """Refuse to start a new run over another run's checkpoints unless asked to discard them (``--fresh``)."""
    if resume or not (out / CKPT_DIR).exists() and not (out / BASE_DIR).exists():
        return
    if not fresh:
        raise ConfigError(
            f"{out} holds a run already: --resume latest continues it, --fresh discards it, "
            "or choose another --out"
        )
    if int(os.environ.get("RANK", "0")) == 0:
        for name in (BASE_DIR, CKPT_DIR, EXPORT_DIR, "eval", "tb", "log.jsonl", "train_config.yaml"):
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)


def step_name(step: int) -> str:
    """``step_0000100``: sorts by step."""
    return f"step_{step:07d}"


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest complete checkpoint of a run directory, or None."""
    ckpts = Path(out) / CKPT_DIR
    pointer = ckpts / LATEST
    if pointer.exists():
        path = ckpts / pointer.read_text().strip()
        if (path / META).exists():
            return path
    done = sorted(p for p in ckpts.glob("step_*") if (p / META).exists()) if ckpts.exists() else []
    return done[-1] if done else None


def resolve_checkpoint(spec: str, out: str | Path) -> Path:
    """``latest`` (in ``out``), a checkpoint directory, or a run directory (its latest)."""
    path = latest_checkpoint(out) if spec == "latest" else Path(spec)
    if path is not None and (path / CKPT_DIR).exists():
        path = latest_checkpoint(path)
    if path is None or not (path / META).exists():
        raise FileNotFoundError(f"no checkpoint to resume from ({spec!r}, run directory {out})")
    return path


def write_checkpoint(
    out: str | Path,
    step: int,
    weights: dict[str, torch.Tensor],
    state: dict[str, Any],
    meta: dict[str, Any],
    keep: int,
) -> Path:
    """Write one checkpoint atomically, point ``latest`` at it, and drop all but the newest ``keep``."""
    ckpts = Path(out) / CKPT_DIR
    ckpts.mkdir(parents=True, exist_ok=True)
    final = ckpts / step_name(step)
    tmp = ckpts / f".tmp-{step_name(step)}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / WEIGHTS))
    torch.save(state, tmp / STATE)
    (tmp / META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    if final.exists():  # the same step saved again (e.g. stop_at then the end): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = ckpts / f".{LATEST}.tmp"
    pointer.write_text(final.name + "\n")
    os.replace(pointer, ckpts / LATEST)
    older = sorted(p for p in ckpts.glob("step_*") if p != final)
    for old in older[: max(0, len(older) + 1 - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """``(weights, state, meta)`` of one checkpoint directory."""
    path = Path(path)
    state = torch.load(path / STATE, map_location="cpu", weights_only=False)
    return load_file(str(path / WEIGHTS)), state, json.loads((path / META).read_text())


def load_model(path: str | Path, map_location: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """A ``LanguageBind`` from an export directory, a training checkpoint, a run directory (latest), or a
    released LanguageBind checkpoint (directory in the official layout, or hub id).

    Returns ``(model, meta)``; ``meta`` holds the training config when there is one (for the
    held-out split and text field that evaluation should default to).
    """
    from model import LanguageBind
    from model.official import is_official_dir, looks_like_hub_id

    if looks_like_hub_id(path) or is_official_dir(Path(path)):  # a released LanguageBind checkpoint
        return LanguageBind.load(path, map_location), {}
    path = Path(path)
    if (path / "config.json").exists() and (path / "model.safetensors").exists():
        run = path.parent if path.name == EXPORT_DIR else None
        meta = _run_meta(run) if run is not None else {}
        return LanguageBind.load(path, map_location), meta
    if (path / CKPT_DIR).exists() or (path / BASE_DIR).exists():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"{path} has no complete checkpoint yet")
        path = found
    if not (path / META).exists():
        raise FileNotFoundError(
            f"{path} is neither a model export (config.json + model.safetensors), "
            f"a training checkpoint (meta.json) nor a run directory"
        )
    run = path.parent.parent
    model = LanguageBind.load(run / BASE_DIR, map_location)
    weights = load_file(str(path / WEIGHTS), device=map_location)
    missing = [k for k in weights if k not in model.state_dict()]
    if missing:
        raise RuntimeError(f"{path / WEIGHTS} does not fit {run / BASE_DIR}: unexpected {missing[:5]}")
    model.load_state_dict(weights, strict=False)
    return model, json.loads((path / META).read_text())


def _run_meta(run: Path) -> dict[str, Any]:
    found = latest_checkpoint(run)
    return json.loads((found / META).read_text()) if found else {}


def export_checkpoint(checkpoint: str | Path, out: str | Path, merge_lora: bool = True) -> Path:
    """A checkpoint (or run directory) -> a plain inference model directory (``LanguageBind.load``),
    LoRA merged into the base weights."""
    model, _ = load_model(checkpoint)
    if merge_lora:
        model.merge_lora()
    return model.save(out)
