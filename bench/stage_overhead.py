"""What the runner costs on top of a stage's own work: the same stage, same config and batch size, called in
a plain Python loop and run through the real runner on Ray, each at two run lengths.

    python bench/stage_overhead.py depth --set depth.model=tiny --rows 32 128
    python bench/stage_overhead.py caption --config configs/demo.yaml --set caption.batch_size=8 --json out.json

From the two lengths (in batches ``B1 < B2``) each path is fitted as ``time = fixed + B * per_batch``:

- plain loop: ``fixed`` is ``setup()`` (model load), ``per_batch`` the mean ``process()`` time;
- runner: ``run_stage`` wall time (plan, the worker's or GPU actor's ``setup()``, reading upstream manifests,
  writing parts and ``_SUCCESS.json``);
- reported: the runner's extra fixed start-up cost (seconds) and its marginal overhead per batch
  (ms, and as a fraction of the plain ``per_batch``).

Inputs: the stage's direct upstream manifests, replicated to the requested row counts (video ids
suffixed ``-rK``) from a source run root. Without ``--source-root`` one is built first by running the
stage's required upstream stages on a few synthetic demo clips. The plain loop uses as many torch
threads as the stage's ``num_cpus`` (what Ray gives its task or actor), so both paths get the same CPU.

Use it from Python as ``measure(stage, overrides, rows=(32, 128))``; it returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from contracts import manifest, store  # noqa: E402
from contracts.status import OK  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from stages import STAGE_ORDER, get_stage_class  # noqa: E402
from stages.base import RunContext  # noqa: E402


def upstream_closure(stage: str) -> list[str]:
    """The stage's required upstream stages and theirs, in pipeline order."""
    need: set[str] = set()
    todo = list(get_stage_class(stage).upstream)
    while todo:
        s = todo.pop()
        if s not in need:
            need.add(s)
            todo += list(get_stage_class(s).upstream)
    return sorted(need, key=STAGE_ORDER.index)


def build_source(stage: str, config: str | None, overrides: list[str], work: Path, videos: int) -> Path:
    """Run the stage's upstream stages on ``videos`` synthetic clips; returns the run root."""
    from pipeline.runner import run_pipeline
    from pipeline.synthetic import make_demo_media

    media = make_demo_media(work / "media", per_concept=1, seconds=2.0, size=(320, 240))
    lines = media.read_text().splitlines()
    listing = work / "videos.csv"
    listing.write_text("\n".join(lines[: videos + 1]) + "\n")
    chain = upstream_closure(stage)
    root = work / "source"
    cfg = load_config(
        config,
        [
            *overrides,
            f"run.root={root}",
            f"run.stages=[{', '.join(chain)}]",
            f"discover.inputs=[{listing}]",
            "run.demo_media=",
        ],
    )
    run_pipeline(cfg, chain)
    return root


def replicate(
    source: Path, target: Path, stages: list[str], n: int, rows_per_part: int
) -> dict[str, pa.Table]:
    """Write ``n`` ok rows per upstream stage under ``target`` (cycled copies, ids ``{id}-r{k}``)."""
    read = {s: pq.read_table(manifest.part_files(str(source), s)) for s in stages}
    read = {s: t.filter(pc.equal(t["status"], OK)) for s, t in read.items()}
    ids = sorted(set.intersection(*(set(t["video_id"].to_pylist()) for t in read.values())))
    if not ids:
        raise RuntimeError(f"no video is ok in all of {stages} under {source}")
    tables: dict[str, pa.Table] = {}
    for s, t in read.items():
        index = {v: i for i, v in enumerate(t["video_id"].to_pylist())}
        picks = [index[ids[k % len(ids)]] for k in range(n)]  # the same videos in every upstream
        new_ids = pa.array([f"{ids[k % len(ids)]}-r{k}" for k in range(n)])
        out = t.take(picks)
        out = out.set_column(out.column_names.index("video_id"), "video_id", new_ids)
        for start in range(0, n, rows_per_part):
            store.write_parquet(manifest.new_part_uri(str(target), s), out.slice(start, rows_per_part))
        manifest.write_success(str(target), s, {"stage": s, "note": "replicated by bench/stage_overhead.py"})
        tables[s] = out
    return tables


def plain_input(stage_cls: Any, tables: dict[str, pa.Table]) -> pa.Table:
    """The columns the runner would give the stage: each from the latest upstream that has it."""
    owner: dict[str, str] = {}
    for s in sorted(tables, key=STAGE_ORDER.index):
        for c in tables[s].column_names:
            if c not in ("video_id", "status", "error") and (stage_cls.reads is None or c in stage_cls.reads):
                owner[c] = s
    first = next(iter(tables.values()))
    cols = {"video_id": first["video_id"]}
    for c, s in owner.items():
        cols[c] = tables[s][c]  # every replicated upstream lists the same ids in the same order
    return pa.table(cols)


def time_plain(stage: str, section: Any, root: Path, batch: pa.Table) -> dict[str, float]:
    """setup() once, then process() over consecutive slices of ``batch_size`` rows."""
    import torch

    cls = get_stage_class(stage)
    torch.set_num_threads(max(1, int(section.num_cpus)))
    instance = cls(section, RunContext(root=str(root)))
    t0 = time.perf_counter()
    instance.setup()
    setup_s = time.perf_counter() - t0
    size = section.batch_size
    t0 = time.perf_counter()
    for start in range(0, len(batch), size):
        instance.process(batch.slice(start, size))
    return {"setup_s": setup_s, "loop_s": time.perf_counter() - t0}


def time_runner(stage: str, cfg: Any) -> float:
    import ray

    from pipeline.runner import run_stage

    # Actors of the previous run are released asynchronously: start from an idle cluster.
    deadline = time.time() + 60
    while (
        ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0)
        and time.time() < deadline
    ):
        time.sleep(0.5)
    print(
        f"[overhead] {stage}: free before the run: {ray.available_resources()}", file=sys.stderr, flush=True
    )
    t0 = time.perf_counter()
    report = run_stage(cfg, stage, mode="force")
    wall = time.perf_counter() - t0
    if report.counts[OK] != report.rows_in:
        print(f"warning: {report.rows_in - report.counts[OK]} rows not ok: {report.reasons}", file=sys.stderr)
    return wall


def measure(
    stage: str,
    overrides: list[str] | None = None,
    rows: tuple[int, int] = (32, 128),
    config: str | None = None,
    source_root: str | None = None,
    work_dir: str | None = None,
    videos: int = 16,
    repeat: int = 1,
) -> dict[str, Any]:
    """Plain loop vs runner at two run lengths; returns the fitted fixed and per-batch costs."""
    from pipeline.runner import init_ray

    overrides = list(overrides or [])
    size = getattr(load_config(config, overrides), stage).batch_size
    if math.ceil(rows[0] / size) >= math.ceil(rows[1] / size):
        raise ValueError(f"rows {rows} must give two different numbers of batches of {size}")
    work = Path(work_dir or tempfile.mkdtemp(prefix=f"overhead-{stage}-"))
    base = load_config(config, overrides)
    # A fresh local Ray unless an address is configured: never measure on someone else's instance.
    init_ray(base.run.ray_address or "local", base.run.num_cpus)
    source = Path(source_root) if source_root else build_source(stage, config, overrides, work, videos)
    cls = get_stage_class(stage)
    ups = [s for s in (*cls.upstream, *cls.optional_upstream) if manifest.has_output(str(source), s)]
    section = getattr(base, stage)
    points = []
    for n in rows:
        root = work / f"rows-{n}"
        store.remove(str(root))
        tables = replicate(source, root, ups, n, base.run.rows_per_part)
        cfg = load_config(config, [*overrides, f"run.root={root}"])
        plain = [time_plain(stage, section, root, plain_input(cls, tables)) for _ in range(repeat)]
        runner = [time_runner(stage, cfg) for _ in range(repeat)]
        points.append(
            {
                "rows": n,
                "batches": math.ceil(n / section.batch_size),
                "plain_setup_s": min(p["setup_s"] for p in plain),
                "plain_loop_s": min(p["loop_s"] for p in plain),
                "runner_s": min(runner),
            }
        )
    (a, b) = points
    db = b["batches"] - a["batches"]
    plain_batch = (b["plain_loop_s"] - a["plain_loop_s"]) / db
    runner_batch = (b["runner_s"] - a["runner_s"]) / db
    plain_fixed = (a["plain_setup_s"] + b["plain_setup_s"]) / 2
    runner_fixed = a["runner_s"] - a["batches"] * runner_batch
    return {
        "stage": stage,
        "overrides": overrides,
        "batch_size": section.batch_size,
        "points": points,
        "plain_ms_per_batch": round(plain_batch * 1000, 1),
        "runner_ms_per_batch": round(runner_batch * 1000, 1),
        "marginal_overhead_ms_per_batch": round((runner_batch - plain_batch) * 1000, 1),
        "marginal_overhead_fraction": round((runner_batch - plain_batch) / plain_batch, 3)
        if plain_batch > 0
        else None,
        "plain_setup_s": round(plain_fixed, 2),
        "runner_fixed_s": round(runner_fixed, 2),
        "startup_overhead_s": round(runner_fixed - plain_fixed, 2),
    }


def as_markdown(r: dict[str, Any]) -> str:
    """One result as a small Markdown table."""
    pts = " / ".join(
        f"{p['rows']} rows ({p['batches']} batches): plain {p['plain_setup_s']:.1f}+{p['plain_loop_s']:.1f}s, "
        f"runner {p['runner_s']:.1f}s"
        for p in r["points"]
    )
    frac = r["marginal_overhead_fraction"]
    return "\n".join(
        [
            f"stage `{r['stage']}` {' '.join(r['overrides'])} (batch_size {r['batch_size']}): {pts}",
            "",
            "| per batch: plain | per batch: runner | marginal overhead | plain setup | runner fixed | start-up overhead |",
            "|---|---|---|---|---|---|",
            f"| {r['plain_ms_per_batch']} ms | {r['runner_ms_per_batch']} ms | {r['marginal_overhead_ms_per_batch']} ms"
            f" ({'n/a' if frac is None else f'{frac:.1%}'}) | {r['plain_setup_s']} s | {r['runner_fixed_s']} s | "
            f"{r['startup_overhead_s']} s |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("stage")
    p.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--rows", type=int, nargs=2, default=(32, 128), metavar=("N1", "N2"))
    p.add_argument("--source-root", help="a run root that already has the stage's upstream output")
    p.add_argument("--work-dir", help="where the replicated roots go (default: a temp dir)")
    p.add_argument("--videos", type=int, default=16, help="synthetic clips in a built source root")
    p.add_argument("--repeat", type=int, default=1, help="runs per point; the fastest counts")
    p.add_argument("--json", help="also write the result here")
    a = p.parse_args(argv)
    if a.rows[0] >= a.rows[1]:
        p.error("--rows N1 N2 needs N1 < N2")
    r = measure(a.stage, a.overrides, tuple(a.rows), a.config, a.source_root, a.work_dir, a.videos, a.repeat)
    print(as_markdown(r))
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
