"""The trainer's progress line, ``log.jsonl``, TensorBoard scalars and (when installed and asked) wandb.

Every ``train.log_every`` steps rank 0 prints one line::

    step 120/400 ep 0 | 41.2 samples/s | loss 2.871 | T video 0.052 | lr 8.7e-04 | data wait 3% | bad 0

``data wait`` is the share of wall time the step spent blocked on the loader: above a few percent,
the towers wait for data (add loader workers or CPUs).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("model.train")


class ProgressLog:
    """Accumulates per-step figures over a logging window; called on every rank (counts are reduced)."""

    def __init__(self, trainer: Any, enabled: bool) -> None:
        self.t, self.enabled = trainer, enabled
        self.out = Path(trainer.cfg.out)
        self._reset()
        self.tb = self.wandb = None
        self.jsonl = None
        if not enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(self.out / "log.jsonl", "a", encoding="utf-8")
        if trainer.cfg.train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tb"))
        if trainer.cfg.train.wandb is not None:
            try:
                import wandb
            except ImportError:
                log.warning(
                    "train.wandb is set but wandb is not installed: pip install wandb; logging without it"
                )
            else:
                w = trainer.cfg.train.wandb
                self.wandb = wandb.init(
                    project=w.project,
                    name=w.name,
                    config=trainer.cfg.model_dump(mode="json"),
                    dir=str(self.out),
                    resume="allow",
                )

    def _reset(self) -> None:
        self.n, self.sums, self.samples, self.wait, self.wall = 0, {}, 0, 0.0, 0.0
        self.bad = self.filtered = 0
        self.start = time.perf_counter()

    def update(
        self, metrics: dict[str, float], micro: list[dict[str, Any]], waited: float, step_s: float
    ) -> None:
        """Add one step; print and write when the window is full."""
        self.n += 1
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.samples += sum(len(mb["key"]) for mb in micro)
        self.wait += waited
        self.wall += step_s
        self.bad += sum(mb["stats"]["bad"] for mb in micro)
        self.filtered += sum(mb["stats"]["filtered"] for mb in micro)
        if self.t.step % self.t.cfg.train.log_every == 0 or self.t.step == self.t.total_steps:
            self.flush()

    def flush(self) -> None:
        t = self.t
        counts = torch.tensor([self.samples, self.bad, self.filtered], dtype=torch.float64)
        counts = t.dist.sum(counts)
        samples, bad, filtered = (int(x) for x in counts.tolist())
        self.total_bad = getattr(self, "total_bad", 0) + bad
        self.total_filtered = getattr(self, "total_filtered", 0) + filtered
        if self.enabled and self.n:
            row: dict[str, Any] = {k: v / self.n for k, v in self.sums.items()}
            row.update(
                step=t.step,
                epoch=t.position["epoch"],
                samples_seen=t.samples_seen,
                samples_per_s=samples / max(self.wall, 1e-9),
                data_wait=self.wait / max(self.wall, 1e-9),
                lr=t.opt.param_groups[0]["lr"] / t.opt.param_groups[0].get("lr_scale", 1.0),
                bad_samples=self.total_bad,
                filtered_samples=self.total_filtered,
            )
            for m in t.modalities:
                row[f"temperature_{m}"] = 1.0 / t.model.logit_scale_of(m).item()
            temps = " ".join(f"{m} {row[f'temperature_{m}']:.3f}" for m in t.modalities)
            print(
                f"step {t.step}/{t.total_steps} ep {row['epoch']} | {row['samples_per_s']:.1f} samples/s | "
                f"loss {row['loss']:.4f} | T {temps} | lr {row['lr']:.2e} | data wait {100 * row['data_wait']:.0f}% "
                f"| bad {self.total_bad} filtered {self.total_filtered}",
                flush=True,
            )
            self._write(row, "train")
        self._reset()

    def _write(self, row: dict[str, Any], prefix: str) -> None:
        self.jsonl.write(json.dumps({"kind": prefix, **row}) + "\n")
        self.jsonl.flush()
        scalars = {f"{prefix}/{k}": v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, self.t.step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=self.t.step)

    def evaluation(self, results: dict[str, Any]) -> dict[str, float]:
        """Print the eval table and log its figures; returns them flattened (``eval/video/t2v_R@1``)."""
        from model.eval import flatten, format_table

        flat = flatten(results)
        if self.enabled and results:
            print(format_table(results), flush=True)
            self._write({"step": self.t.step, **flat}, "eval")
            (self.out / "eval").mkdir(exist_ok=True)
            (self.out / "eval" / f"step_{self.t.step:07d}.json").write_text(
                json.dumps(results, indent=2) + "\n"
            )
        return {f"eval/{k}": v for k, v in flat.items()}

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
