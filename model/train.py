"""``python -m model.train``: contrastive training of the modality towers against the frozen text tower.

One loop for every scale: a CPU, ``torchrun`` (DDP; NCCL on GPU, gloo on CPU; FSDP2 on request),
or ``--ray`` (the same loop in Ray Train's TorchTrainer workers). Read ``train`` top to bottom:
set-up, resume, then per step: micro-batches -> features -> loss -> backward -> clip -> AdamW ->
schedule -> temperature clamp, with logging, evaluation and checkpoints on their cadence.

    python -m model.train --config configs/train/demo.yaml
    torchrun --nproc-per-node 8 -m model.train --config configs/train/video.yaml --data 's3://b/{00000..00999}.tar'
    python -m model.train --config configs/train/demo.yaml --resume latest
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from contracts.config_io import ConfigError
from model.checkpoint import (
    BASE_DIR,
    EXPORT_DIR,
    export_checkpoint,
    read_checkpoint,
    resolve_checkpoint,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from model.data import ShardStream, count_samples, expand_shards, make_loader, tower_sizes
from model.distributed import clip_grad_norm, gather_objects, setup_distributed
from model.objective import Objective
from model.train_config import TrainConfig, load_train_config

log = logging.getLogger("model.train")


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine down to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _amp(device: torch.device, precision: str) -> Any:
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext


def _rng_snapshot(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _rng_restore(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _features(out: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


def _valid(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor] | None:
    return {m: v.to(device) for m, v in batch["valid"].items()} if "valid" in batch else None


class Trainer:
    """The state of one run: model, optimizer, schedule, data stream, counters."""

    def __init__(self, cfg: TrainConfig, resume: str | None = None, device: str | None = None) -> None:
        self.cfg, self.out = cfg, Path(cfg.out)
        self.d = setup_distributed(device or cfg.train.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        from model import LanguageBind, ModelConfig

        self.ckpt = resolve_checkpoint(resume, self.out) if resume else None
        model_config = ModelConfig.model_validate(cfg.model_dict())
        self._plan_steps(model_config)  # data problems surface before a large model is built
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        if (
            self.ckpt is not None
        ):  # frozen weights come from the run's base, trainable ones from the checkpoint
            self.raw = LanguageBind.load(self.out / BASE_DIR)
            weights, state, meta = read_checkpoint(self.ckpt)
            self.raw.load_state_dict(weights, strict=False)  # before FSDP shards the parameters
        else:
            self.raw = LanguageBind.from_config(model_config)
            if self.d.rank == 0:
                self.raw.save(self.out / BASE_DIR)
                (self.out / "train_config.yaml").write_text(
                    yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
                )
        self.raw.to(self.d.device)
        self.modalities = list(cfg.data.modalities)
        if cfg.train.grad_checkpointing:
            self.raw.set_gradient_checkpointing(True)
        if cfg.train.compile:
            for tower in self.raw.towers.values():
                tower.compile()
        self.model = self._wrap(self.raw)
        o = cfg.optim
        self.opt = torch.optim.AdamW(
            self.raw.optimizer_groups(o.lr, o.weight_decay, o.coef_lr), lr=o.lr, betas=o.betas, eps=o.eps
        )
        self.objective = Objective(
            self.raw.config.loss,
            cfg.loss.local_loss,
            cfg.loss.gather_with_grad,
            self.d.rank,
            self.d.world_size,
        )
        self.amp = _amp(self.d.device, cfg.train.precision)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, o.warmup_steps, self.total_steps, o.min_lr_ratio)
        )
        self.step, self.samples_seen, self.position = 0, 0, {"epoch": 0, "batches": 0, "raw": {}}
        self.stop_requested = False
        torch.manual_seed(cfg.train.seed + 1000 * (self.d.rank + 1))  # patch dropout differs per rank
        if self.ckpt is not None:
            self._resume(state, meta)

    def _wrap(self, raw: Any) -> Any:
        if self.d.world_size == 1:
            return raw
        if self.cfg.train.fsdp:
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            bf16 = self.d.device.type == "cuda" and self.cfg.train.precision != "fp32"
            mp = (
                MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
            )
            kw = {"mp_policy": mp} if mp else {}
            for tower in raw.towers.values():
                for block in [*tower.vision.encoder.layers, *(tower.temporal or [])]:
                    fully_shard(block, **kw)
                fully_shard(tower, **kw)
            # The temperatures are scalars, which fully_shard refuses: they stay replicated and their
            # gradients are averaged by hand (the text tower is frozen and needs nothing).
            self.replicated = [
                p for n, p in raw.named_parameters() if p.requires_grad and not n.startswith("towers.")
            ]
            return raw
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.d.device.index] if self.d.device.type == "cuda" else None
        return DDP(raw, device_ids=ids)

    def _plan_steps(self, model_config: Any) -> None:
        c, d = self.cfg, self.d
        urls = [u for s in c.data.sources for u in expand_shards(s.shards)] or expand_shards(c.data.shards)
        n = c.data.epoch_samples or count_samples(
            urls, c.data.modalities, "train", c.data.holdout, c.data.split_seed
        )
        if n is None:
            raise ConfigError(
                "data.epoch_samples: the Parquet indexes of http(s):// and pipe: shards are not "
                "read, so the epoch length is unknown; set it"
            )
        self.epoch_samples = n
        per_step = c.data.batch_size * c.optim.accum_freq * d.world_size
        self.steps_per_epoch = n // per_step
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"data.batch_size: {n} samples per epoch make no full step of {per_step} "
                f"(batch_size x accum_freq x ranks); lower the batch size"
            )
        self.total_steps = c.optim.max_steps or c.optim.epochs * self.steps_per_epoch
        self.stream = ShardStream(
            c.data,
            tower_sizes(model_config),
            train=True,
            seed=c.train.seed,
            rank=d.rank,
            world_size=d.world_size,
            batches_per_epoch=self.steps_per_epoch * c.optim.accum_freq,
        )

    # -- one optimizer step ------------------------------------------------------------------------
    def _forward(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        inputs: dict[str, Any] = {"text": batch["text"]}
        for m in self.modalities:
            if m in batch:
                inputs[m] = batch[m].to(self.d.device, non_blocking=True)
        with self.amp():
            return model(inputs)

    def _sync(self, enabled: bool) -> Any:
        if self.cfg.train.fsdp and self.d.world_size > 1:
            for tower in self.raw.towers.values():
                tower.set_requires_gradient_sync(enabled)
            return contextlib.nullcontext()
        if self.d.world_size > 1 and not enabled:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def train_step(self, micro: list[dict[str, Any]]) -> dict[str, float]:
        """Forward/backward over ``accum_freq`` micro-batches as one contrastive batch, then step."""
        if len(micro) == 1:
            with self._sync(True):
                loss, parts = self.objective(
                    self._forward(self.model, micro[0]), _valid(micro[0], self.d.device)
                )
                loss.backward()
        else:
            # open_clip's accum_freq: features of every micro-batch without gradients first, then each
            # micro-batch again with gradients against the others' cached features, so the negatives
            # span the whole accumulated batch. The RNG is replayed so both passes drop the same patches.
            cached, states = [], []
            with torch.no_grad():
                for mb in micro:
                    states.append(_rng_snapshot(self.d.device))
                    cached.append(_features(self._forward(self.raw, mb)))
            valid = [_valid(mb, self.d.device) for mb in micro]
            cat_valid = {m: torch.cat([v[m] for v in valid]) for m in valid[0]} if valid[0] else None
            for j, mb in enumerate(micro):
                _rng_restore(states[j], self.d.device)
                with self._sync(j == len(micro) - 1):
                    out = self._forward(self.model, mb)
                    feats = {
                        k: torch.cat([out[k] if i == j else c[k] for i, c in enumerate(cached)])
                        for k in cached[0]
                    }
                    # The temperature is shared by every pass: only the first passes its gradient on.
                    for key in ("logit_scale", "logit_bias"):
                        if key in out:
                            feats[key] = {m: s if j == 0 else s.detach() for m, s in out[key].items()}
                    loss, parts = self.objective(feats, cat_valid)
                    loss.backward()
        for p in getattr(self, "replicated", []):
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)
        grad_norm = float("nan")
        if self.cfg.optim.grad_clip:
            grad_norm = clip_grad_norm(
                [p for p in self.raw.parameters() if p.requires_grad], self.cfg.optim.grad_clip
            )
        self.opt.step()
        self.sched.step()
        self.raw.clamp_logit_scale_()
        self.opt.zero_grad(set_to_none=True)
        return {
            "loss": loss.item(),
            **{f"loss_{m}": v.item() for m, v in parts.items()},
            "grad_norm": grad_norm,
        }

    # -- the loop ---------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to ``total_steps`` (or ``train.stop_at``); returns the last metrics."""
        from model.train_log import ProgressLog

        c = self.cfg
        accum = c.optim.accum_freq
        logger = ProgressLog(self, enabled=self.d.rank == 0)
        old_handler = signal.signal(signal.SIGTERM, self._on_sigterm) if _main_thread() else None
        last: dict[str, Any] = {}
        stop_at = min(self.total_steps, c.train.stop_at or self.total_steps)
        self.raw.train()
        try:
            while self.step < stop_at:
                epoch = self.position["epoch"]
                self.stream.set_position(epoch, self.position["batches"], self.position["raw"])
                batches = iter(make_loader(self.stream, pin_memory=self.d.device.type == "cuda"))
                while self.step < stop_at and self.position["batches"] < self.steps_per_epoch * accum:
                    t0 = time.perf_counter()
                    micro = [next(batches, None) for _ in range(accum)]
                    if any(mb is None for mb in micro):
                        raise RuntimeError(
                            f"the loader ran dry in epoch {epoch} after {self.position['batches']} "
                            "batches: the shards have fewer readable samples than their index "
                            "says (see the warnings above)"
                        )
                    waited = time.perf_counter() - t0
                    metrics = self.train_step(micro)
                    self.step += 1
                    self.samples_seen += sum(len(mb["key"]) for mb in micro) * self.d.world_size
                    self.position["batches"] += accum
                    for mb in micro:
                        self.position["raw"][mb["stats"]["worker"]] = mb["stats"]["raw"]
                    logger.update(metrics, micro, waited, time.perf_counter() - t0)
                    last = metrics
                    if c.eval.every and self.step % c.eval.every == 0:
                        logger.evaluation(self.evaluate())
                    if (
                        c.eval.benchmarks
                        and c.eval.benchmarks.every
                        and self.step % c.eval.benchmarks.every == 0
                    ):
                        self.evaluate_benchmarks(logger)
                    if self._should_stop() or self.step % c.train.save_every == 0 or self.step == stop_at:
                        self.save(last)
                    if self.stop_requested:
                        return last
                del batches  # shuts the epoch's workers down
                if self.position["batches"] >= self.steps_per_epoch * accum:
                    self.position = {"epoch": epoch + 1, "batches": 0, "raw": {}}
            if self.step >= self.total_steps:
                if c.eval.final:
                    last = {**last, **logger.evaluation(self.evaluate())}
                if c.eval.benchmarks and c.eval.benchmarks.final:
                    self.evaluate_benchmarks(logger)
                if c.train.export and self.d.rank == 0:
                    export_checkpoint(resolve_checkpoint("latest", self.out), self.out / EXPORT_DIR)
            return last
        finally:
            logger.close()
            if old_handler is not None:
                signal.signal(signal.SIGTERM, old_handler)

    def _on_sigterm(self, *_: Any) -> None:
        log.warning("SIGTERM: saving a checkpoint at the end of this step, then stopping")
        self.stop_requested = True

    def _should_stop(self) -> bool:
        if self.d.world_size > 1:  # every rank must agree, or the checkpoint's collectives would hang
            flag = torch.tensor([float(self.stop_requested)], device=self.d.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self.stop_requested = bool(flag.item())
        return self.stop_requested

    def evaluate(self) -> dict[str, Any]:
        """Retrieval on the eval shards (rank 0; every rank under FSDP, whose towers are sharded)."""
        from model.eval import evaluate_config

        results: dict[str, Any] = {}
        if self.d.rank == 0 or self.cfg.train.fsdp:
            results = evaluate_config(self.raw, self.cfg, amp=self.amp)
        self.raw.train()
        if self.d.world_size > 1:
            dist.barrier()
        return results

    def evaluate_benchmarks(self, logger: Any) -> None:
        """The paper's benchmarks (``eval.benchmarks``) on rank 0, to TensorBoard; the other ranks wait."""
        from model.benchmarks.training import evaluate_benchmarks

        if getattr(self, "_benchmarked_at", None) == self.step:  # the cadence hit the last step already
            return
        self._benchmarked_at = self.step
        if self.cfg.train.fsdp and self.d.world_size > 1:
            log.warning(
                "eval.benchmarks: skipped under FSDP (the towers are sharded); evaluate the export instead"
            )
            return
        if self.d.rank == 0:
            evaluate_benchmarks(self.raw, self.cfg.eval.benchmarks, self.step, self.out, logger.tb, self.amp)
        if self.d.world_size > 1:
            dist.barrier()

    # -- checkpoints ------------------------------------------------------------------------------------
    def _weights(self) -> dict[str, torch.Tensor]:
        if self.cfg.train.fsdp and self.d.world_size > 1:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(
                self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        else:
            state = self.raw.state_dict()
        if self.cfg.train.full_checkpoint:
            return {k: v for k, v in state.items() if not k.startswith("text.encoder.")}
        trainable = {n for n, p in self.raw.named_parameters() if p.requires_grad}
        return {k: v for k, v in state.items() if k in trainable}

    def _optim_state(self) -> dict[str, Any]:
        if self.cfg.train.fsdp and self.d.world_size > 1:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(
                self.model, self.opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        return self.opt.state_dict()

    def save(self, metrics: dict[str, Any]) -> None:
        """An atomic checkpoint of this step (rank 0 writes; every rank contributes RNG and data position)."""
        weights, optim = self._weights(), self._optim_state()
        per_rank = gather_objects(
            {"rng": rng_state(), "position": self.position, "workers": self.stream.workers}, self.d.world_size
        )
        if self.d.rank == 0:
            state = {
                "optimizer": optim,
                "scheduler": self.sched.state_dict(),
                "ranks": per_rank,
                "world_size": self.d.world_size,
            }
            meta = {
                "step": self.step,
                "samples_seen": self.samples_seen,
                "epoch": self.position["epoch"],
                "total_steps": self.total_steps,
                "metrics": metrics,
                "config": self.cfg.model_dump(mode="json"),
            }
            path = write_checkpoint(
                self.out, self.step, weights, state, meta, self.cfg.train.keep_checkpoints
            )
            log.info("checkpoint %s", path)
        if self.d.world_size > 1:
            dist.barrier()

    def _resume(self, state: dict[str, Any], meta: dict[str, Any]) -> None:
        if self.cfg.train.fsdp and self.d.world_size > 1:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(
                self.model, self.opt, state["optimizer"], options=StateDictOptions(full_state_dict=True)
            )
        else:
            self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step, self.samples_seen = meta["step"], meta["samples_seen"]
        ranks = state["ranks"]
        mine = ranks[self.d.rank] if state["world_size"] == self.d.world_size else None
        if mine is not None and mine["workers"] == self.stream.workers:
            self.position = mine["position"]
            set_rng_state(mine["rng"])
        else:  # another layout: same epoch and batch, each worker's read position estimated
            pos = ranks[0]["position"]
            workers = max(1, self.stream.workers)
            share = lambda w: max(0, (pos["batches"] - w + workers - 1) // workers)  # noqa: E731
            self.position = {**pos, "raw": {w: share(w) * self.cfg.data.batch_size for w in range(workers)}}
            log.warning(
                "resuming with a different number of ranks or loader workers: the data position is "
                "approximate (exact resume needs the same layout)"
            )
        if self.position["batches"] >= self.steps_per_epoch * self.cfg.optim.accum_freq:
            self.position = {"epoch": self.position["epoch"] + 1, "batches": 0, "raw": {}}
        log.info("resumed from %s at step %d (%d samples seen)", self.ckpt, self.step, self.samples_seen)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def prepare_out(out: Path, fresh: bool, resume: str | None) -> None:
    """Refuse to start a new run over another run's checkpoints unless asked to discard them."""
    if resume or not (out / "checkpoints").exists() and not (out / BASE_DIR).exists():
        return
    if not fresh:
        raise ConfigError(
            f"{out} holds a run already: --resume latest continues it, --fresh discards it, "
            "or choose another --out"
        )
    if int(os.environ.get("RANK", "0")) == 0:
        import shutil

        for name in (BASE_DIR, "checkpoints", EXPORT_DIR, "eval", "tb", "log.jsonl", "train_config.yaml"):
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)


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
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.lr=5e-4 (repeatable; values are YAML)",
    )
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
    if hasattr(signal, "SIGUSR1") and _main_thread():  # `kill -USR1 PID` prints every thread's stack
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
            from model.train_ray import run_on_ray

            metrics = run_on_ray(cfg, args.resume)
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


__all__ = ["Trainer", "export_checkpoint", "lr_factor", "main", "train"]
