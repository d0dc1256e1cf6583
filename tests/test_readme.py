"""The README's promises that can be checked offline: its Python example runs and its commands exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_inference_example_runs_and_prints_what_it_says(tmp_path):
    block = python_blocks()[0]  # the LanguageBind blocks run in tests/test_languagebind_readme.py
    done = subprocess.run(
        [sys.executable, "-c", block],
        cwd=README.parent,
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    numbers = [float(x) for x in re.findall(r"-?\d+\.\d+(?:e[-+]?\d+)?", done.stdout)]
    assert len(numbers) == 4 + 2, done.stdout  # a 2 x 2 similarity matrix, then 1 x 2 class probabilities
    assert all(-1.0001 <= x <= 1.0001 for x in numbers[:4])
    assert abs(sum(numbers[4:]) - 1) < 1e-3


def test_the_readme_commands_name_real_modules_and_configs():
    text = README.read_text()
    for module in set(re.findall(r"python -m ([\w.]+)", text)):
        path = README.parent / (module.replace(".", "/") + ".py")
        assert path.exists(), module
    for config in set(re.findall(r"configs/[\w/]+\.yaml", text)):
        assert (README.parent / config).exists(), config
