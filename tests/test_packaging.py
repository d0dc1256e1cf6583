"""The wheel installs and runs: ``vidal run --help`` and a tiny run, from outside the checkout.

How the fresh install gets its dependencies without a network: the wheel is built from a copy of the
sources (``pip wheel --no-deps --no-build-isolation``, so nothing is fetched and no ``build/`` is left
in the checkout) and installed with ``--no-deps --no-index`` into a new venv made by
``python -m venv --without-pip`` (``pip --python`` installs into it). The venv then gets one ``.pth``
file holding the path of this test venv's site-packages. A path line in a ``.pth`` only appends that
directory to ``sys.path``; the ``.pth`` files inside it are not run, so the checkout's editable finder
(``__editable__.vidal-*.pth``) stays off, and the fresh venv's own site-packages comes first on the
path: ``vidal``, ``pipeline``, ``stages``, ``model`` and ``contracts`` are the wheel's, while torch,
Ray and the rest are borrowed read-only. The commands run from a temporary directory with no
``PYTHONPATH``, so the checkout is not on the path either; the test asserts where each package was
imported from. Ray's workers start from the same interpreter and see the same path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import write_list

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("contracts", "pipeline", "stages", "model", "vidal", "configs", "manifests")
SOURCE_FILES = ("pyproject.toml", "setup.py", "README.md", "LICENSE")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A fresh venv with the built wheel installed (see the module docstring), and its environment."""
    base = tmp_path_factory.mktemp("packaging")
    src = base / "src"
    for name in SOURCES:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in SOURCE_FILES:
        shutil.copy2(ROOT / name, src / name)
    wheels = base / "wheels"
    built = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            ".",
        ],
        src,
        dict(os.environ),
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("vidal-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    done = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        base,
        dict(os.environ),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "_vidal_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    return {"venv": venv, "python": python, "env": env, "cwd": elsewhere, "wheel": wheel}


def test_the_wheel_holds_the_packages_and_the_shipped_files(installed):
    import zipfile

    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for pkg in ("contracts", "pipeline", "stages", "model", "vidal"):
        assert f"{pkg}/__init__.py" in names
    # every package of the checkout is in the wheel (a new sub-package is found by the build)
    for init in ROOT.glob("*/**/__init__.py"):
        rel = init.relative_to(ROOT).as_posix()
        if rel.split("/")[0] in ("contracts", "pipeline", "stages", "model", "vidal"):
            assert rel in names, f"{rel} is not in the wheel"
    for f in (
        "configs/demo.yaml",
        "configs/vidal.yaml",
        "configs/train/demo.yaml",
        "manifests/stopwords.txt",
    ):
        assert f"vidal/shipped/{f}" in names
    assert not any(n.startswith("tests/") for n in names)


def test_installed_packages_come_from_the_wheel(installed):
    code = (
        "import json, contracts, pipeline, stages, model, vidal\n"
        "from contracts import shipped\n"
        "print(json.dumps({'files': [m.__file__ for m in (contracts, pipeline, stages, model, vidal)],"
        " 'demo': str(shipped.config_path('demo')), 'train': str(shipped.config_path('demo', 'train')),"
        " 'stopwords': str(shipped.resolve('manifests/stopwords.txt'))}))"
    )
    out = _run([str(installed["python"]), "-c", code], installed["cwd"], installed["env"])
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout)
    venv = str(installed["venv"])
    for path in [*found["files"], found["demo"], found["train"], found["stopwords"]]:
        assert path.startswith(venv), f"{path} is not from the installed wheel"
    assert found["demo"].endswith("vidal/shipped/configs/demo.yaml")
    assert found["train"].endswith("vidal/shipped/configs/train/demo.yaml")


def test_vidal_command_help_and_usage_errors(installed):
    env, cwd = installed["env"], installed["cwd"]
    out = _run(["vidal", "run", "--help"], cwd, env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "--config" in out.stdout and "--until" in out.stdout
    out = _run(["vidal"], cwd, env)
    assert out.returncode == 2 and "run" in out.stdout and "convert" in out.stdout
    out = _run(["vidal", "bogus"], cwd, env)
    assert out.returncode == 2 and "unknown command 'bogus'" in out.stderr
    # a user error is one line and exit 2, before any work
    out = _run(["vidal", "run", "--config", "nosuchconfig"], cwd, env)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "nosuchconfig" in out.stderr
    # the python -m form of the installed package takes the same arguments
    out = _run([str(installed["python"]), "-m", "vidal", "report", "--help"], cwd, env)
    assert out.returncode == 0 and "--root" in out.stdout


def test_training_config_by_name_resolves_after_install(installed):
    """``vidal train --config demo`` reads configs/train/demo.yaml, whose ``model:`` names a
    configs/model/*.yaml path relative to the checkout: both come from the wheel."""
    code = (
        "from model.train_config import load_train_config\n"
        "c = load_train_config('demo')\n"
        "print(sorted(c.model_dict()['modalities']))"
    )
    out = _run([str(installed["python"]), "-c", code], installed["cwd"], installed["env"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "['video']"


@pytest.mark.slow
def test_tiny_run_with_the_installed_command(installed, good_videos):
    """``vidal run --config demo --input two.csv --until probe`` from another directory: discover reads
    the shipped stop words, download and probe run on a real local Ray from the installed wheel."""
    cwd = installed["cwd"]
    inputs = write_list(
        cwd / "two.csv", [{"path": str(p), "title": p.stem.replace("_", " ")} for p in good_videos[:2]]
    )
    root = cwd / "root"
    cmd = ["vidal", "run", "--config", "demo", "--input", str(inputs), "--until", "probe"]
    cmd += ["--root", str(root), "--set", "run.num_cpus=2", "--quiet"]
    out = _run(cmd, cwd, installed["env"], timeout=240)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    rows = pq.read_table(root / "probe", columns=["video_id", "status"]).to_pylist()
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows), rows
