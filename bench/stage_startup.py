"""Each stage's fixed start-up: what a stage run costs beyond processing its rows, and what a rerun with
everything already done still costs.

    python bench/stage_startup.py                       # the demo config, 8 synthetic clips, 3 repeats
    python bench/stage_startup.py --videos 8 --repeat 3 --json startup.json

On a fresh local Ray instance: one pipeline run of all configured stages on ``--videos`` clips, then,
per stage and ``--repeat`` times each:

- ``rerun, all done``: ``run_stage`` in resume mode when every upstream id is already done (the runner
  starts no plan, issue 18 change 1: the bookkeeping and ``_SUCCESS.json`` are what is left);
- ``rerun, forced``: ``run_stage`` with ``--force``, every row redone on the same Ray instance: the
  start-up a rerun with work left pays (worker processes, imports, model loads) plus the work;
- ``plan in the driver``: ``upstream_input`` (finding and planning the upstream parts) plus
  ``manifest.done_ids``, the part of that rerun that decides there is nothing to do;
- ``rerun that skips the plan (projected)``: that plus the bookkeeping such a rerun would still do
  (``reconcile`` twice, ``drop_transient_failures``, ``dedupe``, ``status_counts``), timed directly;
- ``plain setup`` / ``plain process``: the stage's ``setup()`` and ``process()`` over the same rows in this
  process, no Ray (the work itself); ``fixed start-up`` = first run's wall time - plain setup - plain process;
- ``import``: importing the stage's module in a fresh interpreter (what every new worker pays), less an
  empty interpreter's start;
- two Ray Data constants: an empty task plan and an empty one-actor plan over 8 rows.

Figures are medians of the repeats; the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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

from contracts import manifest  # noqa: E402
from contracts.status import OK  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from stages import get_stage_class  # noqa: E402
from stages.base import RunContext  # noqa: E402


def load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def import_seconds(module: str, repeat: int) -> float:
    """Seconds to import ``module`` in a fresh interpreter, less the interpreter's own start."""

    def run(code: str) -> float:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True)
        return time.perf_counter() - t

    bare = statistics.median(run("pass") for _ in range(repeat))
    return statistics.median(run(f"import {module}") for _ in range(repeat)) - bare


def stage_input(root: str, cls: Any) -> pa.Table:
    """The ok rows of the stage's upstreams joined on video_id, each column from the latest upstream."""
    tables = []
    for s in (*cls.upstream, *cls.optional_upstream):
        if manifest.has_output(root, s) and manifest.part_files(root, s):
            t = pq.read_table(manifest.part_files(root, s))
            tables.append(t.filter(pc.equal(t["status"], OK)))
    if not tables:
        return pa.table({"video_id": pa.array([], pa.string())})
    ids = sorted(set.intersection(*(set(t["video_id"].to_pylist()) for t in tables)))
    cols: dict[str, list] = {"video_id": ids}
    for t in tables:
        index = {v: i for i, v in enumerate(t["video_id"].to_pylist())}
        rows = t.take([index[v] for v in ids])
        for c in rows.column_names:
            if c not in ("video_id", "status", "error") and (cls.reads is None or c in cls.reads):
                cols[c] = rows[c]
    return pa.table(cols)


def plain(cls: Any, section: Any, root: str, batch: pa.Table) -> tuple[float, float]:
    """setup() and process() over ``batch`` in this process: the stage's own work."""
    stage = cls(section, RunContext(root=root))
    t = time.perf_counter()
    stage.setup()
    setup_s = time.perf_counter() - t
    t = time.perf_counter()
    for start in range(0, len(batch), section.batch_size):
        stage.process(batch.slice(start, section.batch_size))
    return setup_s, time.perf_counter() - t


def ray_constants(repeat: int) -> dict[str, float]:
    import ray

    class Identity:
        def __call__(self, batch):
            return batch

    def tasks() -> None:
        ray.data.from_items([{"x": i} for i in range(8)]).map_batches(lambda b: b, batch_size=4).materialize()

    def actors() -> None:
        ray.data.from_items([{"x": i} for i in range(8)]).map_batches(
            Identity, batch_size=4, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1)
        ).materialize()

    return {
        "empty task plan": median_time(tasks, repeat),
        "empty one-actor plan": median_time(actors, repeat),
    }


def measure(config: str, videos: int, repeat: int, overrides: list[str]) -> dict[str, Any]:
    from pipeline.runner import init_ray, run_pipeline, run_stage
    from pipeline.synthetic import make_demo_media
    from pipeline.upstream import upstream_input

    work = Path(tempfile.mkdtemp(prefix="vidal-startup-"))
    lines = (
        make_demo_media(work / "media", per_concept=1, seconds=2.0, size=(320, 240)).read_text().splitlines()
    )
    listing = work / "videos.csv"
    listing.write_text("\n".join(lines[: videos + 1]) + "\n")
    root = str(work / "root")
    cfg = load_config(
        config, [*overrides, f"run.root={root}", f"discover.inputs=[{listing}]", "run.demo_media="]
    )
    init_ray("local", cfg.run.num_cpus)
    out: dict[str, Any] = {"videos": videos, "repeat": repeat, "load_start": load(), "stages": {}}
    out["ray"] = ray_constants(repeat)
    first = {r.stage: r.wall_s for r in run_pipeline(cfg, list(cfg.run.stages))}
    out["load_after_first_run"] = load()
    for name in cfg.run.stages:
        cls = get_stage_class(name)
        section = getattr(cfg, name)
        rerun = median_time(lambda name=name: run_stage(cfg, name, mode="resume"), repeat)
        forced = median_time(lambda name=name: run_stage(cfg, name, mode="force"), repeat)

        def plan(cls: Any = cls, name: str = name) -> None:
            if cls.upstream or cls.optional_upstream:
                upstream_input(cls, cfg, root)
            manifest.done_ids(root, name)

        instance = cls(section, RunContext(root=root))

        def bookkeeping(stage: Any = instance, name: str = name) -> None:
            # what a rerun that skips the plan still does: reconcile twice, the run-wide rules, dedupe,
            # count (a projection)
            stage.reconcile()
            manifest.drop_transient_failures(root, name)
            stage.reconcile()
            stage.after_plan()
            manifest.dedupe(root, name)
            manifest.status_counts(root, name)

        plan_s = median_time(plan, repeat)
        skip_s = plan_s + median_time(bookkeeping, repeat)
        batch = stage_input(root, cls) if (cls.upstream or cls.optional_upstream) else None
        setup_s, process_s = (
            plain(cls, section, root, batch) if batch is not None and len(batch) else (None, None)
        )
        out["stages"][name] = {
            "first_run_s": first[name],
            "plain_setup_s": setup_s,
            "plain_process_s": process_s,
            "fixed_startup_s": first[name] - setup_s - process_s if setup_s is not None else None,
            "rerun_all_done_s": rerun,
            "rerun_forced_s": forced,
            "plan_in_driver_s": plan_s,
            "rerun_with_skip_projected_s": skip_s,
            "import_s": import_seconds(cls.__module__, repeat),
            "load": load(),
        }
        print(f"[startup] {name}: {out['stages'][name]}", file=sys.stderr, flush=True)
    return out


def as_markdown(r: dict[str, Any]) -> str:
    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    lines = [
        f"{r['videos']} videos, median of {r['repeat']}; load average at the start {r['load_start']}, "
        f"after the first run {r['load_after_first_run']}. Ray Data constants: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in r["ray"].items()),
        "",
        "| stage | first run s | plain setup s | plain process s | fixed start-up s | rerun, all done s "
        "| rerun, forced s | plan in the driver s | rerun that skips the plan (projected) s "
        "| import in a fresh process s | load average |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, s in r["stages"].items():
        lines.append(
            f"| {name} | {f(s['first_run_s'])} | {f(s['plain_setup_s'])} | {f(s['plain_process_s'])} | "
            f"{f(s['fixed_startup_s'])} | {f(s['rerun_all_done_s'])} | {f(s.get('rerun_forced_s'))} | "
            f"{f(s['plan_in_driver_s'])} | "
            f"{f(s['rerun_with_skip_projected_s'])} | {f(s['import_s'])} | {s['load']} |"
        )
    keys = (
        "first_run_s",
        "rerun_all_done_s",
        "rerun_forced_s",
        "plan_in_driver_s",
        "rerun_with_skip_projected_s",
    )
    total = {k: sum(s.get(k) or 0 for s in r["stages"].values()) for k in keys}
    lines.append(
        f"| all stages | {f(total['first_run_s'])} | | | | {f(total['rerun_all_done_s'])} | "
        f"{f(total['rerun_forced_s'])} | {f(total['plan_in_driver_s'])} | "
        f"{f(total['rerun_with_skip_projected_s'])} | | |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", help="also write the result here")
    a = p.parse_args(argv)
    r = measure(a.config, a.videos, a.repeat, a.overrides)
    print(as_markdown(r))
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
