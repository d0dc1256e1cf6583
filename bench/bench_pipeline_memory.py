"""Peak memory of a pipeline run (discover, download, probe, shard) at 100 and 1,000 input videos.

Streaming means the peak should stay flat as the input grows. The run is a subprocess starting its
own local Ray instance; the peak is the summed RSS of its whole process tree (driver, raylet, GCS,
workers), sampled every 0.2 s. Usage: python bench/bench_pipeline_memory.py [--counts 100 1000]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from pipeline.synthetic import CONCEPTS, make_clip

REPO = Path(__file__).resolve().parent.parent


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run(count: int, tmp: Path, sources: list[Path]) -> tuple[float, float]:
    listing = tmp / f"list-{count}.csv"
    with open(listing, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "title"])
        for i in range(count):
            link = tmp / f"v{count}-{i}.mp4"
            if not link.exists():
                os.link(sources[i % len(sources)], link)
            w.writerow([str(link), CONCEPTS[i % len(CONCEPTS)].title])
    cmd = [sys.executable, "-m", "pipeline.run", "--config", "configs/demo.yaml", "--root", str(tmp / f"root-{count}"),
           "--input", str(listing), "--quiet", "--set", "run.ray_address=local",
           "--set", "run.stages=[discover, download, probe, shard]"]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(ps))
        time.sleep(0.2)
    if proc.returncode:
        raise SystemExit(f"run with {count} inputs failed ({proc.returncode})")
    return peak / 2**20, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", type=int, nargs="+", default=[100, 1000])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vidal-bench-mem-"))
    sources = []
    for i, c in enumerate(CONCEPTS[:12]):
        p = tmp / f"src{i}.mp4"
        make_clip(p, c, seconds=2.0, fps=15, size=(320, 240), seed=i)
        sources.append(p)
    print("| input videos | peak RSS of the run's process tree (MiB) | wall s |")
    print("|---:|---:|---:|")
    for n in args.counts:
        peak, wall = run(n, tmp, sources)
        print(f"| {n} | {peak:.0f} | {wall:.0f} |")


if __name__ == "__main__":
    main()
