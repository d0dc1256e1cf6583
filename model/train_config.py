"""The training config: YAML (``configs/train/*.yaml``) plus dotted ``--set`` overrides, validated up front.

Sections: ``model`` (a ``configs/model/*.yaml`` path or the model config inline), ``data``
(``model.data.DataConfig``), ``optim``, ``loss``, ``train``, ``eval``, ``ray`` and ``out``.
A wrong key or value fails before anything is built, naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts import shipped
from contracts.config_io import ConfigError, apply_overrides, format_validation_error
from model.benchmarks.training import BenchmarkEvalConfig
from model.data import DataConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OptimConfig(_Section):
    """AdamW with LanguageBind's settings, a cosine schedule with linear warmup."""

    lr: float = Field(1e-4, gt=0, description="LoRA parameters' learning rate")
    coef_lr: float = Field(1.0, gt=0, description="the other trainable parameters get lr * coef_lr")
    weight_decay: float = Field(0.2, ge=0, description="not on biases, norms, embeddings, temperature")
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-6, gt=0)
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="the cosine ends at lr * min_lr_ratio")
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(
        None, ge=1, description="optimizer steps; overrides epochs (the schedule follows)"
    )
    accum_freq: int = Field(1, ge=1, description="micro-batches per step; negatives span all of them")
    grad_clip: float | None = Field(None, gt=0, description="max global gradient norm; null: no clipping")


class LossConfig(_Section):
    """open_clip's trade-offs for the contrastive loss across ranks (the model config picks clip/siglip)."""

    local_loss: bool = False
    gather_with_grad: bool = False


class EvalConfig(_Section):
    """Retrieval (and zero-shot classification) on held-out shards during training."""

    every: int = Field(
        0, ge=0, description="optimizer steps between evaluations; 0: only at the end if final"
    )
    final: bool = True
    shards: str | list[str] | None = Field(None, description="null: the training shards' held-out split")
    split: Literal["holdout", "all", "train"] = "holdout"
    text_field: str | None = Field(None, description="null: data.text_field (mix evaluates on raw)")
    batch_size: int = Field(64, ge=1)
    max_samples: int | None = Field(None, ge=1)
    classes: list[str] | None = Field(None, description="class names for zero-shot classification")
    templates: list[str] | None = None
    label_field: str | None = Field(None, description="JSON field the class name is found in")
    benchmarks: BenchmarkEvalConfig | None = Field(None, description="the paper's benchmarks every N steps")


class WandbConfig(_Section):
    project: str = "vidal"
    name: str | None = None


class RunOptions(_Section):
    """How the loop runs: precision, memory, compilation, sharding, logging and checkpoints."""

    seed: int = 0
    device: str = Field("auto", description="auto: cuda:LOCAL_RANK when available, else cpu")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on GPU, fp32 on CPU"
    )
    grad_checkpointing: bool = False
    compile: bool = False
    fsdp: bool = Field(False, description="FSDP2: fully_shard each transformer block (needs torchrun/ray)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads of each rank")
    log_every: int = Field(10, ge=1)
    save_every: int = Field(500, ge=1, description="optimizer steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    full_checkpoint: bool = Field(False, description="also save frozen weights in every checkpoint")
    export: bool = Field(True, description="write a plain inference model (LoRA merged) at the end")
    stop_at: int | None = Field(
        None, ge=1, description="save and stop at this step (the schedule is unchanged)"
    )
    tensorboard: bool = True
    wandb: WandbConfig | None = Field(None, description="log to wandb when installed and set")


class RayConfig(_Section):
    """``--ray``: the same loop under Ray Train's TorchTrainer."""

    address: str | None = Field(None, description="null: attach to a running cluster or start a local one")
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0)


class TrainConfig(_Section):
    """Everything one training run needs; ``out`` is where checkpoints, logs and exports go."""

    model: str | dict[str, Any] = Field("configs/model/tiny.yaml", description="model config path or mapping")
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: RunOptions = Field(default_factory=RunOptions)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    out: str = "runs/train"

    def model_dict(self) -> dict[str, Any]:
        """The model config as a mapping (a path is read), with only the towers ``data.modalities``
        trains: LanguageBind trains one modality per run, and unused ViT-L towers would cost memory."""
        model = (
            dict(self.model)
            if isinstance(self.model, dict)
            else yaml.safe_load(shipped.resolve(self.model).read_text())
        )
        towers = model.get("modalities") or {}
        missing = [m for m in self.data.modalities if m not in towers]
        if missing:
            raise ConfigError(
                f"data.modalities: {missing} have no tower in the model config (it has {list(towers)})"
            )
        model["modalities"] = {m: towers[m] for m in self.data.modalities}
        init_from = model.get("init_from") or ""
        if init_from.startswith("languagebind:"):
            model["modalities"] = _released_architecture(
                init_from[len("languagebind:") :], model["modalities"]
            )
        return model


def _released_architecture(source: str, towers: dict[str, Any]) -> dict[str, Any]:
    """``init_from: languagebind:...``: the checkpoint fixes the tower's architecture (frames, image or fbank
    size, widths), so the data loader and the step plan see the sizes the weights were trained with."""
    from model.official import released_tower

    try:
        modality, fields = released_tower(source)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"model.init_from: {e}") from None
    if list(towers) != [modality]:
        raise ConfigError(
            f"model.init_from: {source} is a {modality} tower; data.modalities must be [{modality}], "
            f"not {list(towers)}"
        )
    keep = ("lora", "patch_dropout", "trainable")  # training settings stay the config's
    return {
        modality: {
            **{k: v for k, v in (towers[modality] or {}).items() if k in keep},
            **{k: v for k, v in fields.items() if k not in keep},
        }
    }


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """YAML + ``--set`` overrides -> ``TrainConfig``; ``ConfigError`` naming the key when invalid.

    ``--set model.modalities.video.layers=4`` edits the model config even when ``model`` is a path.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(shipped.config_path(path, "train").read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
    overrides = list(overrides or [])
    if any(o.startswith("model.") for o in overrides) and isinstance(data.get("model"), str):
        data["model"] = yaml.safe_load(shipped.resolve(data["model"]).read_text())
    apply_overrides(data, overrides)
    try:
        config = TrainConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None
    if config.eval.benchmarks is not None:
        try:
            config.eval.benchmarks.check_towers(list(config.data.modalities))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    from model import ModelConfig

    try:
        ModelConfig.model_validate(config.model_dict())
    except (ValidationError, FileNotFoundError, yaml.YAMLError) as e:
        detail = (
            format_validation_error(e).replace("\n  ", "\n  model.") if isinstance(e, ValidationError) else e
        )
        raise ConfigError(f"model config: {detail}") from None
    return config
