"""A root remembers the inputs it was built from (``{root}/_inputs.json``): a rerun without ``--input``
resumes on them (under the demo config it used to add 288 synthetic clips), a rerun with another list
exits 2 before any work, and ``--add-input`` adds one. Through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import write_list

REPO = Path(__file__).resolve().parent.parent


def cli(tmp: Path, root: Path, *args: str, ray_dir: str = "") -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "pipeline.run",
        "--config",
        "configs/demo.yaml",
        "--root",
        str(root),
        "--quiet",
        "--until",
        "discover",
        "--set",
        "run.ray_address=local",
        "--set",
        "run.num_cpus=2",
        "--set",
        f"run.demo_media.dir={tmp / 'demo-media'}",
        "--set",
        "run.demo_media.per_concept=1",
        "--set",
        "run.demo_media.seconds=0.5",
        "--set",
        "run.demo_media.size=[32, 24]",
        *args,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **({"RAY_TMPDIR": ray_dir} if ray_dir else {})}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def titles(root: Path) -> list[str]:
    return sorted(r["title"] for r in pq.read_table(str(root / "discover"), columns=["title"]).to_pylist())


@pytest.mark.slow
def test_a_root_keeps_its_inputs_and_adds_only_when_told(tmp_path):
    mine = write_list(
        tmp_path / "mine.csv", [{"path": str(tmp_path / f"m{i}.mp4"), "title": f"mine {i}"} for i in range(2)]
    )
    other = write_list(tmp_path / "other.csv", [{"path": str(tmp_path / "o.mp4"), "title": "other"}])
    root = tmp_path / "root"
    first = cli(tmp_path, root, "--input", str(mine))
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads((root / "_inputs.json").read_text()) == {"inputs": [f"list:{mine}"]}

    again = cli(tmp_path, root)  # no --input: the remembered list, not the demo media
    assert again.returncode == 0, again.stderr[-2000:]
    assert titles(root) == ["mine 0", "mine 1"] and not (tmp_path / "demo-media").exists()

    ray_dir = tmp_path / "ray"  # a refused run starts no Ray (had it, its session would be here)
    mixed = cli(tmp_path, root, "--input", str(other), ray_dir=str(ray_dir))
    lines = mixed.stderr.strip().splitlines()
    assert mixed.returncode == 2 and len(lines) == 1, mixed.stderr[-2000:]
    assert lines[0] == (
        f"error: run root {root} was built from {mine}; this run would add {other}: pass them "
        f"with --add-input to add them to this root, or choose another --root"
    )
    assert titles(root) == ["mine 0", "mine 1"] and not ray_dir.exists()

    added = cli(tmp_path, root, "--add-input", str(other))
    assert added.returncode == 0, added.stderr[-2000:]
    assert titles(root) == ["mine 0", "mine 1", "other"]
    assert json.loads((root / "_inputs.json").read_text()) == {"inputs": [f"list:{mine}", f"list:{other}"]}


def prepared(tmp: Path, root: Path, *args: str):
    """``prepare_run`` of the CLI (every check and the memory, no Ray): (config, stages)."""
    from pipeline.run import build_parser, prepare_run

    return prepare_run(
        build_parser().parse_args(
            [
                "--config",
                "configs/demo.yaml",
                "--root",
                str(root),
                "--until",
                "discover",
                "--set",
                f"run.demo_media.dir={tmp / 'demo-media'}",
                "--set",
                "run.demo_media.per_concept=1",
                "--set",
                "run.demo_media.seconds=0.2",
                "--set",
                "run.demo_media.size=[16, 16]",
                *args,
            ]
        )
    )


def test_a_demo_root_refuses_a_users_list_and_keeps_the_demo_beside_an_added_one(tmp_path, monkeypatch):
    from pipeline.preflight import UserError

    monkeypatch.chdir(REPO)
    root = tmp_path / "root"
    config, _ = prepared(tmp_path, root)  # a fresh root under the demo config: the demo media
    demo_list = config.discover.inputs[0]
    assert json.loads((root / "_inputs.json").read_text()) == {
        "inputs": [f"demo-media:{tmp_path / 'demo-media'}"]
    }
    mine = write_list(tmp_path / "mine.csv", [{"path": str(tmp_path / "m.mp4"), "title": "mine"}])
    with pytest.raises(UserError, match=f"was built from the demo media; this run would add {mine}"):
        prepared(tmp_path, root, "--input", str(mine))
    added, _ = prepared(tmp_path, root, "--add-input", str(mine))
    assert added.discover.inputs == [str(mine)]
    again, _ = prepared(tmp_path, root)  # both, remembered
    assert again.discover.inputs == [str(mine), demo_list]
