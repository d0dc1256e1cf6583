"""``python -m model.eval --benchmark ...``: the benchmark half of the eval CLI.

Order of work: every benchmark's index is read first (a wrong root or a missing file exits 2 with one
line before the model is loaded), then the model, then its towers are checked, then each benchmark
runs. ``--json OUT`` writes a JSON array with one record per benchmark (shape in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from model.benchmarks import registry
from model.benchmarks.layout import LayoutError


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("paper benchmarks (docs/benchmarks.md)")
    g.add_argument(
        "--benchmark",
        help=f"one of {', '.join(registry.BENCHMARKS)}; 'all' (needs --benchmark-config); 'list'",
    )
    g.add_argument(
        "--benchmark-root",
        help="the benchmark's own folder (its release or LanguageBind's layout); with "
        "--benchmark all, a pattern such as '/data/{benchmark}' (the folders that exist are run)",
    )
    g.add_argument("--benchmark-config", help="YAML 'roots: {benchmark: folder}' for --benchmark all")
    g.add_argument("--skip-missing", action="store_true", help="evaluate without media files that are absent")
    g.add_argument(
        "--paper-model", help="the paper/README row to compare with (default: from the checkpoint name)"
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def resolve_device(spec: str) -> str:
    """``auto``: cuda when available, else cpu."""
    if spec != "auto":
        return spec
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_any(spec: str, device: str) -> Any:
    """A vidal run, checkpoint or export, or a released LanguageBind checkpoint (official dir or hub id)."""
    from model.checkpoint import load_model

    return load_model(spec, map_location=device)[0]


def _plan(args: argparse.Namespace) -> dict[str, str]:
    if args.benchmark.strip().lower() == "all":
        if (
            args.benchmark_root and "{benchmark}" in args.benchmark_root
        ):  # '/data/{benchmark}', as clip_benchmark
            roots = {n: args.benchmark_root.format(benchmark=n) for n in registry.BENCHMARKS}
            found = {n: r for n, r in roots.items() if Path(r).is_dir()}
            if not found:
                raise ValueError(f"--benchmark-root {args.benchmark_root}: no benchmark folder exists")
            return found
        if not args.benchmark_config:
            raise ValueError(
                "--benchmark all needs --benchmark-config roots.yaml (roots: {benchmark: folder}) "
                "or --benchmark-root '/data/{benchmark}'"
            )
        return registry.read_roots(args.benchmark_config)
    name = registry.get(args.benchmark).name
    if args.benchmark_root:
        return {name: args.benchmark_root}
    if args.benchmark_config:
        roots = registry.read_roots(args.benchmark_config)
        if name in roots:
            return {name: roots[name]}
    raise ValueError(f"--benchmark {name} needs --benchmark-root DIR (the benchmark's folder)")


def main(args: argparse.Namespace) -> int:
    from model.benchmarks.paper import reference_row
    from model.benchmarks.report import table
    from model.benchmarks.runner import MissingTower, check_tower

    if args.benchmark.strip().lower() == "list":
        for b in registry.BENCHMARKS.values():
            print(f"{b.name:<12} {b.title:<22} {b.modality:<9} {b.task}")
        return 0
    try:
        plan = _plan(args)
        data = {name: registry.get(name).read(root, args.skip_missing) for name, root in plan.items()}
        row = reference_row(str(args.checkpoint), args.paper_model)
    except (ValueError, LayoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    empty = [n for n, d in data.items() if len(d) == 0]
    if empty:
        print(f"error: {empty[0]}: no items to evaluate in {plan[empty[0]]}", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    try:
        model = load_any(args.checkpoint, device)
        for name in plan:
            check_tower(model, registry.get(name))
    except (FileNotFoundError, MissingTower) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    records, failed = _run_all(model, data, args, row, device)
    print(table(records))
    if args.json_out:
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(records, indent=2) + "\n")
        tmp.replace(out)
    return 1 if failed else 0


def _run_all(
    model: Any, data: dict[str, Any], args: argparse.Namespace, row: str, device: str
) -> tuple[list[dict[str, Any]], list[str]]:
    """Each benchmark in turn; one that meets an unreadable file is reported and the others still run."""
    import torch

    from model.benchmarks.runner import run_benchmark

    kwargs = (
        {"amp": lambda: torch.autocast("cuda", dtype=torch.bfloat16)} if device.startswith("cuda") else {}
    )
    records, failed = [], []
    for name, d in data.items():
        d = d.head(args.max_samples) if args.max_samples else d
        try:
            rec = run_benchmark(
                model,
                registry.get(name),
                d,
                model_name=str(args.checkpoint),
                paper_row=row,
                batch_size=args.batch_size,
                workers=args.workers,
                progress=not args.no_progress,
                **kwargs,
            )
        except RuntimeError as e:  # an unreadable media file; a loader worker wraps it in its traceback
            reason = next((ln for ln in reversed(str(e).splitlines()) if "cannot read" in ln), str(e))
            print(f"error: {name}: {reason[reason.find('cannot read') :].strip()}", file=sys.stderr)
            failed.append(name)
            continue
        records.append(rec)
        t = rec["timing"]
        print(
            f"{name}: {d.layout} layout, {len(d)} items in {t['seconds']:.1f} s ({t['items_per_s']:.1f}/s, "
            f"data wait {100 * t['data_wait']:.0f}%)",
            file=sys.stderr,
        )
    return records, failed
