"""``make demo``: the embedded default end to end on this machine.

Runs the pipeline with ``configs/demo.yaml`` (local Ray, synthetic videos, offline models), then a
short CPU training run on the shards and held-out evaluation, then the dataset report, and prints
where everything is. Each step is the same command a user would run by hand.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time

PIPELINE = [sys.executable, "-m", "pipeline.run", "--config", "configs/demo.yaml"]


def run(cmd: list[str]) -> None:
    print(f"\n$ {' '.join(cmd[1:] if cmd[0] == sys.executable else cmd)}", flush=True)
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.demo", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="training steps of the demo model (default: optim.max_steps of configs/train/demo.yaml)",
    )
    p.add_argument("--skip-train", action="store_true", help="stop after the pipeline and the report")
    args = p.parse_args(argv)
    t0 = time.time()
    try:
        run(PIPELINE)
        trained = False
        if not args.skip_train and importlib.util.find_spec("model.train"):
            steps = [] if args.max_steps is None else ["--max-steps", str(args.max_steps)]
            run(
                [
                    sys.executable,
                    "-m",
                    "model.train",
                    "--config",
                    "configs/train/demo.yaml",
                    "--fresh",
                    *steps,
                ]
            )
            run(
                [
                    sys.executable,
                    "-m",
                    "model.eval",
                    "--checkpoint",
                    "runs/train/demo",
                    "--classes",
                    "moving left,moving right,moving up,moving down",
                ]
            )
            trained = True
        from pipeline.report import write_report

        report = write_report("runs/demo")
    except subprocess.CalledProcessError as e:
        print(f"demo step failed with exit status {e.returncode}: {' '.join(e.cmd)}", file=sys.stderr)
        return e.returncode or 1
    print(f"\ndemo finished in {time.time() - t0:.0f}s")
    print("  dataset: runs/demo (manifests per stage, shards in runs/demo/shard)")
    if trained:
        print("  model:   runs/train/demo (checkpoints, TensorBoard logs)")
    print(f"  report:  {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
