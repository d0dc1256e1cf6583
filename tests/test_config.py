"""Config validation: unknown keys and bad values fail before any work, naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from contracts.config_io import ConfigError, parse_override
from pipeline.config import load_config

REPO = Path(__file__).resolve().parent.parent


def test_demo_config_loads_with_typed_values():
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert cfg.run.stages[0] == "discover"
    assert cfg.probe.max_duration == 20
    assert isinstance(cfg.probe.batch_size, int)


def test_override_parses_yaml_values():
    assert parse_override("probe.batch_size=32") == (["probe", "batch_size"], 32)
    assert parse_override("run.stages=[probe, shard]") == (["run", "stages"], ["probe", "shard"])
    assert parse_override("probe.max_duration=") == (["probe", "max_duration"], None)
    cfg = load_config(None, ["probe.batch_size=32", "run.root=/tmp/x"])
    assert cfg.probe.batch_size == 32 and cfg.run.root == "/tmp/x"


@pytest.mark.parametrize(
    "override, key",
    [
        ("probe.batch_sise=3", "probe.batch_sise"),  # typo in a key
        ("probe.batch_size=0", "probe.batch_size"),  # out of range
        ("probe.batch_size=lots", "probe.batch_size"),  # wrong type
        ("nosuchstage.x=1", "nosuchstage"),  # unknown section
        ("run.stages=[probe, warp]", "run.stages"),  # unknown stage
        ("probe.short_side=[1,2]", "probe.short_side"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert key in str(e.value)


def test_stage_list_is_put_in_pipeline_order():
    cfg = load_config(None, ["run.stages=[shard, probe, discover]"])
    assert cfg.run.stages == ["discover", "probe", "shard"]


def test_bad_yaml_file_is_a_config_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("run: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_cli_config_error_exits_nonzero_before_any_work(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"run": {"root": str(tmp_path / "run")}, "probe": {"jpeg_qualty": 80}}))
    r = subprocess.run(
        [sys.executable, "-m", "pipeline.run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert r.returncode == 2
    assert "probe.jpeg_qualty" in r.stderr and "unknown key" in r.stderr
    assert not (tmp_path / "run").exists()  # nothing was started or written


def test_cli_help_documents_every_option():
    r = subprocess.run(
        [sys.executable, "-m", "pipeline.run", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert r.returncode == 0
    for opt in ("--config", "--input", "--root", "--stage", "--until", "--force", "--retry-failed", "--set"):
        assert opt in r.stdout
