"""Peak memory of a pipeline run (discover, download, probe, shard) at 100 and 1,000 input videos.

Streaming means the peak should stay flat as the input grows. The run is a subprocess starting its
own local Ray instance; the peak is the summed RSS of its whole process tree (driver, raylet, GCS,
workers), sampled every 0.2 s, as RSS and as PSS (shared object-store pages divided among the
processes mapping them). Usage: python bench/bench_pipeline_memory.py [--counts 100 1000] [--set k=v]
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


def process_name(p: psutil.Process) -> str:
    cmd = p.cmdline()
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split("(")[0]
    scripts = [Path(a).name for a in cmd if a.endswith(".py")]
    return scripts[0] if scripts else ("driver" if "pipeline.run" in cmd else p.name())


def tree_memory(proc: psutil.Process) -> tuple[int, int, dict[str, int]]:
    """Summed RSS and PSS of the process tree, and PSS by process title. RSS counts the object store's
    shared pages once per process that maps them; PSS divides shared pages among their users."""
    rss = pss = 0
    by_name: dict[str, int] = {}
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info = p.memory_full_info()
            name = process_name(p)
        except (psutil.Error, IndexError):
            continue
        rss += info.rss
        pss += info.pss
        by_name[name] = by_name.get(name, 0) + info.pss
    return rss, pss, by_name


def run(count: int, tmp: Path, sources: list[Path], sets: list[str]) -> tuple[float, float, float, str]:
    listing = tmp / f"list-{count}.csv"
    with open(listing, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "title"])
        for i in range(count):
            link = tmp / f"v{count}-{i}.mp4"
            if not link.exists():
                os.link(sources[i % len(sources)], link)
            w.writerow([str(link), CONCEPTS[i % len(CONCEPTS)].title])
    cmd = [
        sys.executable,
        "-m",
        "pipeline.run",
        "--config",
        "configs/demo.yaml",
        "--root",
        str(tmp / f"root-{count}"),
        "--input",
        str(listing),
        "--set",
        "run.ray_address=local",
        "--set",
        "run.stages=[discover, download, probe, shard]",
        *(a for kv in sets for a in ("--set", kv)),
    ]
    t0 = time.time()
    log_path = tmp / f"run-{count}.log"
    # the child writes the log; a handle of our own follows it, so reading never moves the child's offset
    with open(log_path, "w") as log_out, open(log_path) as log_in:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log_out, stderr=subprocess.STDOUT)
        ps = psutil.Process(proc.pid)
        peak_rss = peak_pss = 0
        stage, top = "start-up", ""
        while proc.poll() is None:
            for line in log_in.readlines():  # the lines written since the last sample
                if "] starting" in line:
                    stage = line.split("[")[1].split("]")[0]
            rss, pss, by_name = tree_memory(ps)
            peak_rss = max(peak_rss, rss)
            if pss > peak_pss:
                peak_pss = pss
                largest = sorted(by_name.items(), key=lambda kv: -kv[1])[:3]
                top = f"{stage}: " + ", ".join(f"{n} {v / 2**20:.0f}" for n, v in largest)
            time.sleep(0.2)
    if proc.returncode:
        raise SystemExit(f"run with {count} inputs failed ({proc.returncode}); log: {log_path}")
    return peak_rss / 2**20, peak_pss / 2**20, time.time() - t0, top


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override for the runs")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vidal-bench-mem-"))
    sources = []
    for i, c in enumerate(CONCEPTS[:12]):
        p = tmp / f"src{i}.mp4"
        make_clip(p, c, seconds=2.0, fps=15, size=(320, 240), seed=i)
        sources.append(p)
    print(
        "| input videos | peak RSS, summed (MiB) | peak PSS (MiB) | wall s | stage at the peak: largest PSS (MiB) |"
    )
    print("|---:|---:|---:|---:|---|")
    for n in args.counts:
        rss, pss, wall, top = run(n, tmp, sources, args.sets)
        print(f"| {n} | {rss:.0f} | {pss:.0f} | {wall:.0f} | {top} |", flush=True)


if __name__ == "__main__":
    main()
