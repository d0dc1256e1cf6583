"""The ``Trainer``: one training run's state and its loop, on one rank (``model.train`` runs it).

Read it top to bottom: set-up (the step plan from the shard indexes, the model, AdamW with
LanguageBind's groups, the cosine schedule), resume, then per step: micro-batches -> features ->
loss -> backward -> clip -> AdamW -> schedule -> temperature clamp, with logging, evaluation and
checkpoints on their cadence. How the model is spread over the ranks (one process, DDP or FSDP2) is
one ``model.distributed.Strategy``, chosen once, so the loop reads the same under each.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
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
from model.distributed import choose_strategy, clip_grad_norm, setup_distributed
from model.objective import Objective
from model.train_config import TrainConfig

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
    """The state of one run: model, optimizer, schedule, data stream, counters.

    ``model`` is the LanguageBind model itself (parameters, state dict, evaluation); ``wrapped`` is what
    the training forward runs through (its DDP wrapper, or the model again under one process and FSDP);
    ``dist`` is where this process sits among the ranks; ``strategy`` how the model is spread over them.
    """

    def __init__(self, cfg: TrainConfig, resume: str | None = None, device: str | None = None) -> None:
        self.cfg, self.out = cfg, Path(cfg.out)
        self.dist = setup_distributed(device or cfg.train.device)
        self.strategy = choose_strategy(self.dist, cfg.train.fsdp, cfg.train.precision)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        from model import LanguageBind, ModelConfig

        self.ckpt = resolve_checkpoint(resume, self.out) if resume else None
        model_config = ModelConfig.model_validate(cfg.model_dict())
        self._plan_steps(model_config)  # data problems surface before a large model is built
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        # resuming: frozen weights come from the run's base, trainable ones from the checkpoint
        if self.ckpt is not None:
            self.model = LanguageBind.load(self.out / BASE_DIR)
            weights, state, meta = read_checkpoint(self.ckpt)
            self.model.load_state_dict(weights, strict=False)  # before FSDP shards the parameters
        else:
            self.model = LanguageBind.from_config(model_config)
            if self.dist.is_main:
                self.model.save(self.out / BASE_DIR)
                config = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
                (self.out / "train_config.yaml").write_text(config)
        self.model.to(self.dist.device)
        self.modalities = list(cfg.data.modalities)
        if cfg.train.grad_checkpointing:
            self.model.set_gradient_checkpointing(True)
        if cfg.train.compile:
            for tower in self.model.towers.values():
                tower.compile()
        self.wrapped = self.strategy.wrap(self.model)
        o = cfg.optim
        groups = self.model.optimizer_groups(o.lr, o.weight_decay, o.coef_lr)
        self.opt = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps)
        self.objective = Objective(
            self.model.config.loss,
            cfg.loss.local_loss,
            cfg.loss.gather_with_grad,
            self.dist.rank,
            self.dist.world_size,
        )
        self.amp = _amp(self.dist.device, cfg.train.precision)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, o.warmup_steps, self.total_steps, o.min_lr_ratio)
        )
        # position: the epoch, its micro-batches trained on, and how many samples each loader worker read
        self.step, self.samples_seen, self.position = 0, 0, {"epoch": 0, "batches": 0, "read": {}}
        self.stop_requested = False
        torch.manual_seed(cfg.train.seed + 1000 * (self.dist.rank + 1))  # patch dropout differs per rank
        if self.ckpt is not None:
            self._resume(state, meta)

    def _plan_steps(self, model_config: Any) -> None:
        c = self.cfg
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
        per_step = c.data.batch_size * c.optim.accum_freq * self.dist.world_size
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
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            batches_per_epoch=self.steps_per_epoch * c.optim.accum_freq,
        )

    # -- one optimizer step ------------------------------------------------------------------------
    def _forward(self, module: Any, batch: dict[str, Any]) -> dict[str, Any]:
        inputs: dict[str, Any] = {"text": batch["text"]}
        for m in self.modalities:
            if m in batch:
                inputs[m] = batch[m].to(self.dist.device, non_blocking=True)
        with self.amp():
            return module(inputs)

    def train_step(self, micro: list[dict[str, Any]]) -> dict[str, float]:
        """Forward/backward over ``accum_freq`` micro-batches as one contrastive batch, then step."""
        device = self.dist.device
        if len(micro) == 1:
            with self.strategy.gradient_sync(True):
                out = self._forward(self.wrapped, micro[0])
                loss, parts = self.objective(out, _valid(micro[0], device))
                loss.backward()
        else:
            # open_clip's accum_freq: features of every micro-batch without gradients first, then each
            # micro-batch again with gradients against the others' cached features, so the negatives
            # span the whole accumulated batch. The RNG is replayed so both passes drop the same patches.
            cached, states = [], []
            with torch.no_grad():
                for mb in micro:
                    states.append(_rng_snapshot(device))
                    cached.append(_features(self._forward(self.model, mb)))
            valid = [_valid(mb, device) for mb in micro]
            cat_valid = {m: torch.cat([v[m] for v in valid]) for m in valid[0]} if valid[0] else None
            for j, mb in enumerate(micro):
                _rng_restore(states[j], device)
                with self.strategy.gradient_sync(j == len(micro) - 1):
                    out = self._forward(self.wrapped, mb)
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
        self.strategy.after_backward()
        grad_norm = float("nan")
        if self.cfg.optim.grad_clip:
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            grad_norm = clip_grad_norm(trainable, self.cfg.optim.grad_clip)
        self.opt.step()
        self.sched.step()
        self.model.clamp_logit_scale_()
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
        accum, per_epoch = c.optim.accum_freq, self.steps_per_epoch * c.optim.accum_freq
        logger = ProgressLog(self, enabled=self.dist.is_main)
        old_handler = signal.signal(signal.SIGTERM, self._on_sigterm) if _main_thread() else None
        last: dict[str, Any] = {}
        stop_at = min(self.total_steps, c.train.stop_at or self.total_steps)
        self.model.train()
        try:
            while self.step < stop_at:
                epoch = self.position["epoch"]
                self.stream.set_position(epoch, self.position["batches"], self.position["read"])
                batches = iter(make_loader(self.stream, pin_memory=self.dist.device.type == "cuda"))
                while self.step < stop_at and self.position["batches"] < per_epoch:
                    t0 = time.perf_counter()
                    micro = [next(batches, None) for _ in range(accum)]
                    if any(mb is None for mb in micro):
                        raise RuntimeError(
                            f"the loader ran dry in epoch {epoch} after {self.position['batches']} "
                            "batches: the shards have fewer readable samples than their index "
                            "says (see the warnings above)"
                        )
                    waited = time.perf_counter() - t0
                    last = self.train_step(micro)
                    self.step += 1
                    self.samples_seen += sum(len(mb["key"]) for mb in micro) * self.dist.world_size
                    self.position["batches"] += accum
                    for mb in micro:
                        self.position["read"][mb["stats"]["worker"]] = mb["stats"]["read"]
                    logger.update(last, micro, waited, time.perf_counter() - t0)
                    if c.eval.every and self.step % c.eval.every == 0:
                        logger.evaluation(self.evaluate())
                    bench = c.eval.benchmarks
                    if bench and bench.every and self.step % bench.every == 0:
                        self.evaluate_benchmarks(logger)
                    if self._should_stop() or self.step % c.train.save_every == 0 or self.step == stop_at:
                        self.save(last)
                    if self.stop_requested:
                        return last
                del batches  # shuts the epoch's workers down
                if self.position["batches"] >= per_epoch:
                    self.position = {"epoch": epoch + 1, "batches": 0, "read": {}}
            if self.step >= self.total_steps:
                if c.eval.final:
                    last = {**last, **logger.evaluation(self.evaluate())}
                if c.eval.benchmarks and c.eval.benchmarks.final:
                    self.evaluate_benchmarks(logger)
                if c.train.export and self.dist.is_main:
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
        # every rank must agree, or the checkpoint's collectives would hang
        self.stop_requested = self.dist.any(self.stop_requested)
        return self.stop_requested

    def evaluate(self) -> dict[str, Any]:
        """Retrieval on the eval shards (rank 0; every rank under FSDP, whose towers are sharded)."""
        from model.eval import evaluate_config

        results: dict[str, Any] = {}
        if self.dist.is_main or not self.strategy.whole_model_on_rank0:
            results = evaluate_config(self.model, self.cfg, amp=self.amp)
        self.model.train()
        self.dist.barrier()
        return results

    def evaluate_benchmarks(self, logger: Any) -> None:
        """The paper's benchmarks (``eval.benchmarks``) on rank 0, to TensorBoard; the other ranks wait."""
        from model.benchmarks.training import evaluate_benchmarks

        if getattr(self, "_benchmarked_at", None) == self.step:  # the cadence hit the last step already
            return
        self._benchmarked_at = self.step
        if not self.strategy.whole_model_on_rank0:
            log.warning(
                "eval.benchmarks: skipped under FSDP (the towers are sharded); evaluate the export instead"
            )
            return
        if self.dist.is_main:
            evaluate_benchmarks(
                self.model, self.cfg.eval.benchmarks, self.step, self.out, logger.tb, self.amp
            )
        self.dist.barrier()

    # -- checkpoints ------------------------------------------------------------------------------------
    def _weights(self) -> dict[str, torch.Tensor]:
        state = self.strategy.model_state()
        if self.cfg.train.full_checkpoint:
            return {k: v for k, v in state.items() if not k.startswith("text.encoder.")}
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        return {k: v for k, v in state.items() if k in trainable}

    def save(self, metrics: dict[str, Any]) -> None:
        """An atomic checkpoint of this step (rank 0 writes; every rank contributes RNG and data position)."""
        weights, optim = self._weights(), self.strategy.optimizer_state(self.opt)
        mine = {"rng": rng_state(), "position": self.position, "workers": self.stream.workers}
        per_rank = self.dist.gather_objects(mine)
        if self.dist.is_main:
            state = {
                "optimizer": optim,
                "scheduler": self.sched.state_dict(),
                "ranks": per_rank,
                "world_size": self.dist.world_size,
            }
            meta = {
                "step": self.step,
                "samples_seen": self.samples_seen,
                "epoch": self.position["epoch"],
                "total_steps": self.total_steps,
                "metrics": metrics,
                "config": self.cfg.model_dump(mode="json"),
            }
            keep = self.cfg.train.keep_checkpoints
            log.info("checkpoint %s", write_checkpoint(self.out, self.step, weights, state, meta, keep))
        self.dist.barrier()

    def _resume(self, state: dict[str, Any], meta: dict[str, Any]) -> None:
        self.strategy.load_optimizer_state(self.opt, state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step, self.samples_seen = meta["step"], meta["samples_seen"]
        ranks = [{**r, "position": _position(r["position"])} for r in state["ranks"]]
        mine = ranks[self.dist.rank] if state["world_size"] == self.dist.world_size else None
        if mine is not None and mine["workers"] == self.stream.workers:
            self.position = mine["position"]
            set_rng_state(mine["rng"])
        else:  # another layout: same epoch and batch, each worker's read position estimated
            pos = ranks[0]["position"]
            workers = max(1, self.stream.workers)
            share = lambda w: max(0, (pos["batches"] - w + workers - 1) // workers)  # noqa: E731
            self.position = {**pos, "read": {w: share(w) * self.cfg.data.batch_size for w in range(workers)}}
            log.warning(
                "resuming with a different number of ranks or loader workers: the data position is "
                "approximate (exact resume needs the same layout)"
            )
        if self.position["batches"] >= self.steps_per_epoch * self.cfg.optim.accum_freq:
            self.position = {"epoch": self.position["epoch"] + 1, "batches": 0, "read": {}}
        log.info("resumed from %s at step %d (%d samples seen)", self.ckpt, self.step, self.samples_seen)


def _position(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's data position; checkpoints written before the rename call ``read`` ``raw``."""
    read = saved.get("read", saved.get("raw", {}))
    return {"epoch": saved["epoch"], "batches": saved["batches"], "read": read}


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
