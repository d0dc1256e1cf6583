"""``python -m model.train --ray``: the same loop in Ray Train's TorchTrainer workers.

Ray Train starts one worker per rank on the cluster (``ray.address``, or the running one), sets up
the process group (gloo on CPU, NCCL on GPU) and calls the training loop in each: the loop is handed
in (``model.train.main`` passes ``model.train.train``), so this module imports nothing of the trainer
and ``model.train`` and ``model.train_ray`` form no circle. The run directory must be storage every
worker can reach (a shared file system); the final export is also handed to Ray's storage, so it
reaches the driver's side either way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.checkpoint import EXPORT_DIR
from model.train_config import TrainConfig

#: one training run on this rank: ``loop(config, resume) -> last metrics`` (``model.train.train``)
Loop = Callable[[TrainConfig, str | None], dict[str, Any]]


def _absolute(spec: str | list[str]) -> str | list[str]:
    """Local shard paths made absolute (Ray workers do not share the driver's working directory)."""
    if isinstance(spec, list):
        return [str(_absolute(s)) for s in spec]
    return spec if "://" in spec or spec.startswith("pipe:") else str(Path(spec).resolve())


def _worker(config: dict[str, Any]) -> None:
    import ray.train

    os.environ["VIDAL_LAUNCHER"] = "RAY_TRAIN"  # Ray Train owns the process group
    context = ray.train.get_context()
    os.environ.setdefault("LOCAL_RANK", str(context.get_local_rank()))
    cfg = TrainConfig.model_validate(config["config"])
    metrics = config["loop"](cfg, config["resume"])
    export = Path(cfg.out) / EXPORT_DIR
    # Every worker reports (a collective in Ray Train); rank 0 hands over the exported model, which
    # Ray copies to its storage.
    checkpoint = None
    if context.get_world_rank() == 0 and (export / "model.safetensors").exists():
        checkpoint = ray.train.Checkpoint.from_directory(str(export))
    ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, checkpoint=checkpoint)


def run_on_ray(cfg: TrainConfig, loop: Loop, resume: str | None = None) -> dict[str, Any]:
    """Run ``loop`` in ``cfg.ray.num_workers`` Ray Train workers (CPU or GPU); returns the last metrics.

    ``loop`` travels to the workers pickled, so it must be importable there by name (a module-level
    function of an installed module, as ``model.train.train``)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        from contracts.worker_env import worker_env

        # the object-store settings ($VIDAL_STORAGE) and the driver's Hugging Face settings reach every node
        env = worker_env()
        ray.init(address=cfg.ray.address, runtime_env={"env_vars": env})
    data = cfg.data.model_copy(
        update={
            "shards": _absolute(cfg.data.shards),
            "sources": [s.model_copy(update={"shards": _absolute(s.shards)}) for s in cfg.data.sources],
        }
    )
    # the model config travels inline: a relative path would not resolve in the workers
    cfg = cfg.model_copy(
        update={"out": str(Path(cfg.out).resolve()), "data": data, "model": cfg.model_dict()}
    )
    resources = {
        "CPU": cfg.ray.cpus_per_worker,
        **({"GPU": cfg.ray.gpus_per_worker} if cfg.ray.use_gpu else {}),
    }
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"config": cfg.model_dump(mode="json"), "resume": resume, "loop": loop},
        scaling_config=ScalingConfig(
            num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(name=Path(cfg.out).name, storage_path=str(Path(cfg.out) / "ray")),
    )
    return dict(trainer.fit().metrics or {})
