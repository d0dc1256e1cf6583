"""The same loop across processes: two-process DDP and FSDP2 under torchrun (gloo on CPU), and the
Ray Train path on the session's local Ray instance (two CPU workers)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.checkpoint import latest_checkpoint, read_checkpoint
from pipeline.synthetic import CONCEPTS
from tests.test_data import write_concept_shards
from tests.test_train import losses, tiny_model, write_config


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("dist_shards")
    write_concept_shards(d, CONCEPTS[:24], per_concept=1, per_shard=4)
    return d


def torchrun(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "model.train",
        "--config",
        str(config),
        *args,
    ]
    return subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parent.parent
    )


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_process_run_under_torchrun(tmp_path, shards, fsdp):
    path = write_config(
        tmp_path,
        shards,
        model=tiny_model(lora={"r": 4}),
        data={"workers": 1},
        train={"fsdp": fsdp, "save_every": 2},
    )
    done = torchrun(path, "--max-steps", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    weights, state, meta = read_checkpoint(latest_checkpoint(run))
    assert state["world_size"] == 2 and meta["samples_seen"] == 3 * 4 * 2
    # each rank read its own shards: their data positions are recorded separately
    positions = [r["position"] for r in state["ranks"]]
    assert all(p["batches"] == 3 and p["read"] for p in positions)
    assert all(math.isfinite(v) for v in losses(run).values()) and len(losses(run)) == 3
    assert (run / "export" / "model.safetensors").exists()
    # resuming the two-process run continues from its checkpoint
    again = torchrun(path, "--max-steps", "4", "--resume", "latest")
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_checkpoint(latest_checkpoint(run))[2]["step"] == 4


def test_ray_train_runs_the_same_loop(tmp_path, shards, ray_local):
    from model.train import train
    from model.train_config import load_train_config
    from model.train_ray import run_on_ray

    path = write_config(
        tmp_path, shards, ray={"num_workers": 2, "cpus_per_worker": 1}, train={"save_every": 2, "threads": 1}
    )
    metrics = run_on_ray(load_train_config(path, ["optim.max_steps=3"]), train)
    run = tmp_path / "run"
    _, state, meta = read_checkpoint(latest_checkpoint(run))
    assert state["world_size"] == 2 and meta["step"] == 3 and meta["samples_seen"] == 24
    assert math.isfinite(metrics["loss"])
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3]
