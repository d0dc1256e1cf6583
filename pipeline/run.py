"""The pipeline's entry point: ``python -m pipeline.run``, ``python pipeline/run.py`` and
``ray submit ray_cluster.yaml pipeline/run.py -- …``.

Runs the configured stages (or one, or a prefix) over a run root, resuming by default, and prints a
per-stage summary. Exit status: 0 when the run finished (rows may have failed: the summary says how
many), 2 for a config or input error, 1 for anything unexpected.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python pipeline/run.py` (the form `ray submit` uses)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import BaseModel  # noqa: E402

from contracts import store
from contracts.config_io import ConfigError, add_set_option  # noqa: E402
from pipeline import preflight, root_inputs  # noqa: E402
from pipeline.config import load_config
from pipeline.preflight import UserError  # noqa: E402

EPILOG = """examples:
  python -m pipeline.run --config configs/demo.yaml
  python -m pipeline.run --config configs/demo.yaml --input my_videos.csv --root runs/mine
  python -m pipeline.run --config configs/vidal.yaml --stage depth --set depth.batch_size=32
  python -m pipeline.run --config configs/vidal.yaml --until shard --retry-failed
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.run",
        description="Build a VIDAL-style dataset: run the pipeline's stages on Ray, writing Parquet "
        "manifests and WebDataset shards under a run root. Reruns resume where the last run stopped.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        help="pipeline config YAML (configs/demo.yaml, configs/vidal.yaml); without it, built-in defaults",
    )
    given = p.add_mutually_exclusive_group()
    given.add_argument(
        "--input",
        metavar="LIST",
        help="run on your own videos: a CSV/Parquet/JSONL list with "
        "a 'path' or 'url' column and optional title, hashtags, description columns "
        "(replaces discover.inputs)",
    )
    given.add_argument(
        "--add-input",
        metavar="LIST",
        action="append",
        default=[],
        help="add this list to a root built from other inputs (repeatable; a root remembers "
        "its inputs and refuses others without this flag)",
    )
    p.add_argument("--root", help="run root: a local directory or s3:// / gs:// URI (sets run.root)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--stage", metavar="NAME", help="run only this stage (its upstream output must exist)")
    which.add_argument("--until", metavar="NAME", help="run the configured stages up to and including NAME")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--force", action="store_true", help="discard the selected stages' output and redo them"
    )
    mode.add_argument("--retry-failed", action="store_true", help="redo only the rows that failed before")
    add_set_option(p, "depth.batch_size=32")
    p.add_argument("--quiet", action="store_true", help="no progress lines, only the final summary")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        config, stages = prepare_run(args)
    except (UserError, ConfigError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from contracts.backends import ModelLoadError
    from contracts.lock import RootLocked
    from pipeline.runner import run_pipeline
    from pipeline.stage_output import summary_table
    from pipeline.stall import StageStopped
    from pipeline.upstream import StageInputError

    mode = "force" if args.force else "retry_failed" if args.retry_failed else "resume"
    try:
        reports = run_pipeline(config, stages, mode)
    except (StageInputError, ModelLoadError, FileNotFoundError, RootLocked, StageStopped) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    root = store.normalize(config.run.root)
    print(f"\nrun root: {root}")
    print(summary_table(reports))
    from pipeline.stage_output import failure_note

    if note := failure_note(reports, root):  # failures over each stage's whole manifest
        print(note)
    for r in reports:
        if r.stage == "shard":
            info = store.read_json(store.join(root, "shard", "_SUCCESS.json"))
            print(
                f"shards: {info.get('shards', 0)} tars, {info.get('samples', 0)} samples in {info.get('dir')}"
            )
    return 0


def prepare_run(args: argparse.Namespace) -> tuple[BaseModel, list[str]]:
    """The validated config and the stages to run; ``UserError`` / ``ConfigError`` before any work.

    Every check comes first (stage names, root, inputs, the root's input memory); only then are the
    demo media generated and the inputs remembered."""
    overrides = list(args.overrides)
    if args.root:
        overrides.append(f"run.root={args.root}")
    config = load_config(args.config, overrides)
    store.configure(config.run.storage)  # before anything touches the root
    preflight.check_stage_names(args.stage, args.until)
    from pipeline.runner import select_stages

    stages = select_stages(config, args.stage, args.until)
    preflight.check_root(config.run.root)
    preflight.check_clip_durations(config, stages)
    if "discover" not in stages:
        return config, stages
    given = args.add_input or ([args.input] if args.input else [])
    if given:
        config.discover.inputs = list(given)
    remembered = root_inputs.read(config.run.root) or None  # an empty memory remembers nothing
    demo = config.run.demo_media
    use_demo = False
    if not given and not config.discover.has_inputs():
        use_demo = root_inputs.apply(config.discover, remembered) if remembered else demo is not None
        if use_demo and demo is None:
            raise UserError(
                f"run root {config.run.root} was built from the demo media, but this config has "
                f"no run.demo_media; run it with the demo config or give --input"
            )
    current = root_inputs.describe(config.discover, demo.dir if use_demo else None)
    added = [c for c in current if remembered and c not in remembered]
    if added and not args.add_input:
        raise UserError(
            f"run root {store.normalize(config.run.root)} was built from "
            f"{root_inputs.shown(remembered)}; this run would add {root_inputs.shown(added)}: "
            f"pass them with --add-input to add them to this root, or choose another --root"
        )
    preflight.check_inputs(config.discover, from_cli=bool(given))
    if use_demo:
        from pipeline.synthetic import make_demo_media

        # file:// URLs, so that the demo runs the real yt-dlp path (download.allow_file_urls)
        demo_list = make_demo_media(
            demo.dir,
            per_concept=demo.per_concept,
            seconds=demo.seconds,
            fps=demo.fps,
            size=tuple(demo.size),
            as_urls=True,
            long_videos=demo.long_videos,
            copies=demo.copies,
        )
        config.discover.inputs = [*config.discover.inputs, str(demo_list)]  # beside any list added to it
    if current and (remembered is None or added):
        root_inputs.write(config.run.root, [*remembered, *added] if remembered else current)
    return config, stages


if __name__ == "__main__":
    sys.exit(main())
