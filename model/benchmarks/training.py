"""``eval.benchmarks`` in a training config: the paper's benchmarks every N steps, to TensorBoard.

    eval:
      benchmarks:
        every: 1000                 # optimizer steps; 0: only at the end of the run
        roots: {msrvtt: /data/MSRVTT, esc50: /data/ESC-50-master}
        max_items: 500              # a quick subset while training (null: the whole benchmark)

Only benchmarks whose tower the run trains are allowed (a wrong name or tower fails at config load,
naming the key). Rank 0 evaluates; scalars go to TensorBoard as ``bench/<benchmark>/<metric path>``
and every record to ``<out>/eval/benchmarks.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

log = logging.getLogger("model.train")


class BenchmarkEvalConfig(BaseModel):
    """Which benchmarks to run during training, where they live, and how often."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    every: int = Field(0, ge=0, description="optimizer steps between runs; 0: only at the end")
    final: bool = Field(True, description="also run when training ends")
    roots: dict[str, str] = Field(description="benchmark name -> its folder (docs/benchmarks.md)")
    max_items: int | None = Field(None, ge=1, description="first N items of each benchmark (null: all)")
    batch_size: int = Field(32, ge=1)
    workers: int = Field(2, ge=0)
    skip_missing: bool = False

    @field_validator("roots")
    @classmethod
    def _known(cls, roots: dict[str, str]) -> dict[str, str]:
        from model.benchmarks.registry import get

        if not roots:
            raise ValueError("name at least one benchmark root")
        out = {}
        for name, root in roots.items():
            out[get(name).name] = root
            if not Path(root).expanduser().is_dir():
                raise ValueError(f"{name}: benchmark root is not a directory: {root}")
        return out

    def check_towers(self, modalities: list[str]) -> None:
        """``ValueError`` naming a benchmark whose tower the run does not train."""
        from model.benchmarks.registry import get

        for name in self.roots:
            if get(name).modality not in modalities:
                raise ValueError(
                    f"eval.benchmarks.roots.{name}: needs a {get(name).modality!r} tower; "
                    f"data.modalities is {modalities}"
                )


def evaluate_benchmarks(
    model: Any,
    cfg: BenchmarkEvalConfig,
    step: int,
    out: Path,
    tb: Any = None,
    amp: Any = contextlib.nullcontext,
) -> list[dict[str, Any]]:
    """Run every configured benchmark on ``model`` (left in train mode afterwards); log and return records."""
    from model.benchmarks.registry import get
    from model.benchmarks.report import flatten, table
    from model.benchmarks.runner import run_benchmark

    records = []
    was_training = model.training
    try:
        for name, root in cfg.roots.items():
            bench = get(name)
            data = bench.read(root, cfg.skip_missing)
            if cfg.max_items:
                data = data.head(cfg.max_items)
            rec = run_benchmark(
                model,
                bench,
                data,
                model_name=f"{out} step {step}",
                paper_row="LanguageBind",
                batch_size=cfg.batch_size,
                workers=cfg.workers,
                progress=False,
                amp=amp,
            )
            rec["step"] = step
            records.append(rec)
            if tb is not None:
                for key, value in flatten(rec).items():
                    tb.add_scalar(f"bench/{key}", value, step)
    finally:
        model.train(was_training)
    print(table(records), flush=True)
    (out / "eval").mkdir(parents=True, exist_ok=True)
    with open(out / "eval" / "benchmarks.jsonl", "a", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    return records
