"""``python -m model.train``: contrastive training of the modality towers against the frozen text tower.

One loop for every scale: a CPU, ``torchrun`` (DDP; NCCL on GPU, gloo on CPU; FSDP2 on request),
or ``--ray`` (the same loop in Ray Train's TorchTrainer workers: ``model.train_ray`` is handed
``train``, so it imports nothing of the trainer). The loop itself is ``model.trainer.Trainer``; this
module is the command line and ``train``, what every rank runs.

    python -m model.train --config configs/train/demo.yaml
    torchrun --nproc-per-node 8 -m model.train --config configs/train/video.yaml --data 's3://b/{00000..00999}.tar'
    python -m model.train --config configs/train/demo.yaml --resume latest
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import torch.distributed as dist

from contracts.config_io import ConfigError, add_set_option
from model.checkpoint import export_checkpoint, prepare_out
from model.train_config import TrainConfig, load_train_config
from model.trainer import Trainer


def train(cfg: TrainConfig, resume: str | None = None, device: str | None = None) -> dict[str, Any]:
    """Run (or resume) one training run in this process; call on every rank."""
    trainer = Trainer(cfg, resume, device)
    try:
        return trainer.fit()
    finally:
        if dist.is_initialized() and "RAY_TRAIN" not in os.environ.get("VIDAL_LAUNCHER", ""):
            dist.destroy_process_group()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m model.train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="training config YAML (configs/train/*.yaml)")
    p.add_argument("--data", help="shards: path, directory, glob, brace pattern or URLs (sets data.shards)")
    p.add_argument("--out", help="run directory for checkpoints, logs and the export (sets out)")
    p.add_argument(
        "--max-steps", type=int, help="optimizer steps (sets optim.max_steps; the schedule follows)"
    )
    add_set_option(p, "optim.lr=5e-4")
    p.add_argument(
        "--resume", metavar="latest|PATH", help="continue a run: 'latest' in --out, or a checkpoint"
    )
    p.add_argument("--fresh", action="store_true", help="discard --out's checkpoints and logs and start over")
    p.add_argument(
        "--ray", action="store_true", help="run under Ray Train (workers and GPUs from the ray section)"
    )
    p.add_argument(
        "--export",
        nargs=2,
        metavar=("CHECKPOINT", "OUT"),
        help="write CHECKPOINT (or a run directory's latest) as a plain model with LoRA merged, then exit",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the loader forks after the tokenizer ran
    main_thread = threading.current_thread() is threading.main_thread()
    if hasattr(signal, "SIGUSR1") and main_thread:  # `kill -USR1 PID` prints every thread's stack
        import faulthandler

        with contextlib.suppress(OSError, ValueError):  # no real stderr (captured): skip it
            faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)
    if args.export:
        print(export_checkpoint(*args.export))
        return 0
    overrides = list(args.overrides)
    overrides += [f"data.shards={json.dumps(args.data)}"] if args.data else []
    overrides += [f"out={json.dumps(args.out)}"] if args.out else []
    overrides += [f"optim.max_steps={args.max_steps}"] if args.max_steps else []
    try:
        cfg = load_train_config(args.config, overrides)
        if "://" in str(cfg.out) and not str(cfg.out).startswith("file://"):
            raise ConfigError(
                f"out: {cfg.out} is an object-store URI; checkpoints need a local or shared "
                "directory (README: Object-store roots); copy the run to the bucket afterwards"
            )
        prepare_out(Path(cfg.out), fresh=args.fresh, resume=args.resume)
        if args.ray:
            # ``train`` goes to the workers by reference; under ``python -m`` this module is __main__,
            # which they lack, so the reference is taken from the module by its name
            from model.train import train as loop
            from model.train_ray import run_on_ray

            metrics = run_on_ray(cfg, loop, args.resume)
        else:
            metrics = train(cfg, args.resume)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        # the evaluation table was printed already; the last step's figures close the run
        print(json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and "/" not in k}))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Trainer", "build_parser", "main", "train"]
