"""``eval.benchmarks`` in a training config: benchmarks run every N steps and at the end, their
figures land in TensorBoard and ``eval/benchmarks.jsonl``; a wrong entry fails at config load."""

from __future__ import annotations

import json

import pytest

from contracts.config_io import ConfigError
from model.train import main
from model.train_config import load_train_config
from tests.test_benchmarks_data import build_esc50, build_msrvtt
from tests.test_train import shards, write_config  # noqa: F401  (the module's shard fixture)


def test_benchmarks_during_training_reach_tensorboard(tmp_path, shards):  # noqa: F811
    root = build_msrvtt(tmp_path / "msrvtt", n=3)
    cfg = write_config(
        tmp_path,
        shards,
        train={"log_every": 1, "save_every": 100, "tensorboard": True},
        optim={"lr": 1e-3, "max_steps": 4},
        eval={
            "final": False,
            "benchmarks": {"every": 2, "roots": {"MSR-VTT": str(root)}, "workers": 0, "batch_size": 2},
        },
    )
    assert main(["--config", str(cfg)]) == 0
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "eval" / "benchmarks.jsonl").read_text().splitlines()]
    assert [(r["benchmark"], r["step"], r["n"]) for r in records] == [("msrvtt", 2, 3), ("msrvtt", 4, 3)]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    r1 = events.Scalars("bench/msrvtt/text_to_video/R@1")
    assert [e.step for e in r1] == [2, 4]
    assert r1[-1].value == pytest.approx(records[-1]["metrics"]["text_to_video"]["R@1"])


def test_benchmark_entries_are_checked_at_config_load(tmp_path, shards):  # noqa: F811
    esc = build_esc50(tmp_path / "esc")
    cfg = write_config(tmp_path, shards, eval={"benchmarks": {"roots": {"esc50": str(esc)}}})
    with pytest.raises(ConfigError, match="eval.benchmarks.roots.esc50: needs a 'audio' tower"):
        load_train_config(cfg)
    cfg = write_config(tmp_path, shards, eval={"benchmarks": {"roots": {"kinetics": str(esc)}}})
    with pytest.raises(ConfigError, match="eval.benchmarks.roots.*unknown benchmark 'kinetics'"):
        load_train_config(cfg)
    cfg = write_config(tmp_path, shards, eval={"benchmarks": {"roots": {"msrvtt": str(tmp_path / "nope")}}})
    with pytest.raises(ConfigError, match="not a directory"):
        load_train_config(cfg)
