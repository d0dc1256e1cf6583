"""``make bench``: the CPU benchmarks in one go (each prints a Markdown table; see bench/RESULTS.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = [
    ["bench_probe.py"],
    ["bench_pipeline_memory.py"],
    ["bench_download.py", "--n", "2000", "--modes", "http,ytdlp,runner,memory"],
    ["bench_vision.py", "--cpu"],
    ["bench_language.py", "--cpu"],
    ["bench_model.py"],
    ["bench_train.py"],
    ["report_scale.py"],
]


def main() -> int:
    failed = []
    for script, *args in RUNS:
        if not (HERE / script).exists():
            continue
        print(f"\n## {script} {' '.join(args)}", flush=True)
        if subprocess.run([sys.executable, str(HERE / script), *args]).returncode:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
