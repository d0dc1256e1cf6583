"""The trainer on one CPU: schedule, optimizer groups, checkpoints and export, exact resume,
gradient accumulation that keeps negatives, several modalities, and config errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from model.data import NoUsableSamples, make_loader
from model.train import main
from model.train_config import load_train_config
from model.trainer import Trainer, lr_factor
from pipeline.synthetic import CONCEPTS
from tests.test_data import write_concept_shards

TINY_VIDEO = {
    "width": 32,
    "layers": 2,
    "heads": 2,
    "mlp_dim": 64,
    "patch_size": 8,
    "image_size": 32,
    "num_frames": 8,
}


def tiny_model(**video) -> dict:
    """A tiny random model config (tiny text tower, one video tower) as the trainer's ``model`` section."""
    return {"text": {"name_or_path": "tiny"}, "modalities": {"video": {**TINY_VIDEO, **video}}}


def write_config(tmp_path: Path, shards: Path, model: dict | None = None, **sections) -> Path:
    """A training YAML for the tiny model on ``shards`` (sections override the defaults below)."""
    import yaml

    cfg = {
        "model": model or tiny_model(),
        "data": {
            "shards": str(shards),
            "text_field": "title",
            "batch_size": 4,
            "workers": 0,
            "shuffle_buffer": 8,
        },
        "optim": {"lr": 1e-3, "warmup_steps": 2, "epochs": 1, "grad_clip": 1.0},
        "train": {"log_every": 1, "save_every": 100, "tensorboard": False},
        "eval": {"final": False},
        "out": str(tmp_path / "run"),
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("train_shards")
    write_concept_shards(d, CONCEPTS[:24], per_concept=1, per_shard=4)
    return d


def test_lr_schedule_warms_up_then_follows_a_cosine():
    assert lr_factor(0, 10, 100, 0.0) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.0) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100, 0.0) == pytest.approx(0.5)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)


def test_optimizer_follows_languagebind(tmp_path, shards):
    path = write_config(
        tmp_path,
        shards,
        model=tiny_model(lora={"r": 4}),
        optim={"lr": 5e-4, "coef_lr": 1e-3, "weight_decay": 0.2},
    )
    trainer = Trainer(load_train_config(path))
    assert trainer.opt.defaults["betas"] == (0.9, 0.98) and trainer.opt.defaults["eps"] == 1e-6
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    for group in trainer.opt.param_groups:
        kinds = {("lora" if ".lora_" in names[id(p)] else "other") for p in group["params"]}
        assert len(kinds) == 1
        assert group["initial_lr"] == pytest.approx(5e-4 if kinds == {"lora"} else 5e-7)
        for p in group["params"]:
            n = names[id(p)]
            # biases, norms, token/position/time embeddings and the temperature; the patch
            # embedding is a convolution kernel and decays like the other weights
            embedding = "embedding" in n and "patch_embedding" not in n
            no_decay = p.ndim < 2 or embedding or "norm" in n or n.startswith("logit_scale")
            assert group["weight_decay"] == (0.0 if no_decay else 0.2), n
    assert any(
        n.startswith("logit_scale")
        for g in trainer.opt.param_groups
        for n in map(names.get, map(id, g["params"]))
    )


def test_run_writes_atomic_checkpoints_logs_and_an_export(tmp_path, shards, monkeypatch):
    from model import LanguageBind
    from model.checkpoint import latest_checkpoint, load_model, read_checkpoint

    monkeypatch.setenv("WANDB_MODE", "disabled")  # wandb, when installed, must not go online in a test
    path = write_config(
        tmp_path,
        shards,
        model=tiny_model(lora={"r": 4}),
        train={"save_every": 2, "tensorboard": True, "wandb": {"project": "test"}},
    )
    assert main(["--config", str(path), "--max-steps", "5"]) == 0
    run = tmp_path / "run"
    ckpt = latest_checkpoint(run)
    assert ckpt.name == "step_0000005" and sorted(p.name for p in (run / "checkpoints").glob("step_*")) == [
        "step_0000004",
        "step_0000005",
    ]  # keep_checkpoints=2
    assert not list((run / "checkpoints").glob(".tmp-*"))
    weights, state, meta = read_checkpoint(ckpt)
    model, _ = load_model(ckpt)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(weights) == trainable and any(".lora_A." in n for n in weights)
    assert meta["step"] == 5 and meta["samples_seen"] == 20 and "optimizer" in state and "scheduler" in state
    assert state["ranks"][0]["position"]["batches"] in (0, 5)  # an epoch of 24 samples is 6 batches
    assert set(losses(run)) == {1, 2, 3, 4, 5} and all(math.isfinite(v) for v in losses(run).values())
    assert list((run / "tb").glob("events.*"))
    exported = LanguageBind.load(run / "export")  # LoRA merged into plain weights
    assert not any(".lora_" in k for k in exported.state_dict())
    x = torch.randn(2, 8, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        exported.eval()
        assert torch.allclose(model.towers["video"](x), exported.towers["video"](x), atol=1e-5)
    # a new run over it is refused; --fresh starts over
    assert main(["--config", str(path), "--max-steps", "5"]) == 2
    assert main(["--config", str(path), "--max-steps", "1", "--fresh", "--set", "train.export=false"]) == 0
    assert not (run / "export").exists() and latest_checkpoint(run).name == "step_0000001"


def test_resume_continues_exactly(tmp_path, shards):
    # 24 samples / batch 4 = 6 steps an epoch: stop mid-epoch 1, resume, finish in epoch 1. Two loader
    # workers: the resumed loader must restart each worker at its own read position and turn.
    common = {"data": {"workers": 2, "batch_size": 4}, "optim": {"max_steps": 10}}
    whole = write_config(tmp_path / "a", shards, **common)
    assert main(["--config", str(whole)]) == 0
    part = write_config(tmp_path / "b", shards, **common, train={"stop_at": 8})
    assert main(["--config", str(part)]) == 0
    assert max(losses(tmp_path / "b" / "run")) == 8
    assert main(["--config", str(part), "--resume", "latest", "--set", "train.stop_at=null"]) == 0
    a, b = losses(tmp_path / "a" / "run"), losses(tmp_path / "b" / "run")
    assert sorted(a) == sorted(b) == list(range(1, 11))
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-5), step


def first_step_gradients(path: Path) -> dict[str, torch.Tensor]:
    """The gradients the optimizer sees at the first step of the run configured at ``path``."""
    trainer = Trainer(load_train_config(path))
    trainer.stream.set_position(0)
    micro = [b for _, b in zip(range(trainer.cfg.optim.accum_freq), make_loader(trainer.stream))]
    captured: dict[str, torch.Tensor] = {}
    # the optimizer's step is where the gradients are read; the rest of train_step runs as is
    trainer.opt.step = lambda: captured.update(
        {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    )
    trainer.train_step(micro)
    return captured


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_accumulation_gives_the_gradient_of_the_whole_batch(tmp_path, shards):
    grads = {}
    # (accum_freq, micro-batch, gradient checkpointing): all see the same 8 samples in one step
    for accum, batch, ckpt in ((1, 8, False), (2, 4, False), (4, 2, False), (2, 4, True)):
        path = write_config(
            tmp_path / f"acc{accum}{ckpt}",
            shards,
            model=tiny_model(patch_dropout=0.0),
            data={"batch_size": batch, "shuffle_buffer": 0},
            optim={"accum_freq": accum, "grad_clip": None},
            train={"grad_checkpointing": ckpt},
        )
        grads[accum, ckpt] = first_step_gradients(path)
    reference = grads[1, False]
    for key, found in grads.items():
        assert found.keys() == reference.keys()
        for name, g in reference.items():
            assert torch.allclose(found[name], g, atol=1e-6, rtol=1e-4), (key, name)


def test_several_modalities_train_with_their_own_temperature(tmp_path):
    d = tmp_path / "shards"
    write_concept_shards(d / "a", CONCEPTS[:8], per_shard=4, depth=True)
    write_concept_shards(d / "b", CONCEPTS[8:16], per_shard=4)
    tower = dict(TINY_VIDEO, num_frames=1, temporal=False)
    model = {"text": {"name_or_path": "tiny"}, "modalities": {"video": TINY_VIDEO, "depth": tower}}
    path = write_config(
        tmp_path,
        d / "*/*.tar",
        model=model,
        data={"modalities": ["video", "depth"]},
        eval={"final": True, "split": "all"},
        optim={"max_steps": 4},
    )
    assert main(["--config", str(path)]) == 0
    results = json.loads(sorted((tmp_path / "run" / "eval").glob("*.json"))[-1].read_text())
    assert results["modalities"]["video"]["samples"] == 16 and results["modalities"]["depth"]["samples"] == 8
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(
        math.isfinite(r["loss_depth"]) and "temperature_depth" in r for r in rows if r["kind"] == "train"
    )


def test_languagebind_recipes_are_configs():
    expected = {
        "video": (1e-4, 1.0, 640, 16),
        "depth": (5e-4, 1e-3, 1024, 1),
        "infrared": (1e-4, 1e-3, 1024, 1),
        "audio": (5e-4, 1e-3, 512, 8),
    }
    for modality, (lr, coef, batch, epochs) in expected.items():
        cfg = load_train_config(f"configs/train/{modality}.yaml")
        o = cfg.optim
        assert (o.lr, o.coef_lr, cfg.data.batch_size * o.accum_freq * 8, o.epochs) == (
            lr,
            coef,
            batch,
            epochs,
        )
        assert (o.betas, o.eps, o.weight_decay) == ((0.9, 0.98), 1e-6, 0.2)
        assert list(cfg.model_dict()["modalities"]) == [modality] and cfg.data.text_field == "mix"


def test_config_errors_name_the_key(tmp_path, shards, capsys):
    path = write_config(tmp_path, shards)
    assert main(["--config", str(path), "--set", "optim.lr=-1"]) == 2
    assert "optim.lr" in capsys.readouterr().err
    assert main(["--config", str(path), "--set", "model.modalities.video.widht=3"]) == 2
    assert "widht" in capsys.readouterr().err
    assert main(["--config", str(path), "--set", "data.batch_size=64"]) == 2
    assert "no full step" in capsys.readouterr().err


def test_unreadable_shards_stop_the_run_with_a_clear_error(tmp_path, shards):
    import shutil

    broken = tmp_path / "broken"
    broken.mkdir()
    for index in sorted(shards.glob("*.parquet"))[:2]:  # the index promises samples the tars lack
        shutil.copy(index, broken / index.name)
        (broken / index.name.replace(".parquet", ".tar")).write_bytes(b"not a tar file" * 100)
    path = write_config(tmp_path, broken, data={"workers": 1, "batch_size": 2})
    with pytest.raises(NoUsableSamples, match=r"gave no usable sample \(\d+ bad.*unreadable shard data"):
        main(["--config", str(path), "--max-steps", "2"])


def _imports(path: str) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function, and every name it takes from one."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(Path(path).read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_the_ray_path_is_handed_the_loop_and_the_loader_imports_public_names():
    # model.train imports model.train_ray; the other way round would be a circle
    assert not {m for m in _imports("model/train_ray.py") if m.startswith(("model.train.", "model.trainer"))}
    assert "model.train" not in _imports("model/train_ray.py")
    private = [m for m in _imports("model/data.py") if m.startswith("webdataset") and "._" in m]
    assert not private, private
