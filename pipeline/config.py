"""Typed pipeline config: a YAML file plus dotted ``--set`` overrides, validated before any work.

Each stage declares its own settings as a pydantic ``Config`` class in its module; this module
assembles them under the stage's name beside the ``run`` section. Unknown keys and bad values fail
at once with the key's dotted name.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from contracts import shipped
from contracts.config_io import ConfigError, apply_overrides, format_validation_error, parse_override  # noqa: F401
from contracts.store import StorageSettings
from stages import CURATION_STAGES, STAGE_ORDER, available_stages, get_stage_class


class DemoMediaConfig(BaseModel):
    """Synthetic demo videos generated before the run when absent (the embedded default)."""

    model_config = ConfigDict(extra="forbid")
    dir: str = "runs/demo-media"
    per_concept: int = Field(1, ge=1, description="clips per (colour, shape, motion) concept")
    seconds: float = Field(2.0, gt=0)
    size: tuple[int, int] = (320, 240)
    fps: int = Field(15, ge=1)
    long_videos: int = Field(0, ge=0, description="longer videos with scene cuts, for the clip stage")
    copies: int = Field(0, ge=0, description="re-encoded, resized and trimmed copies, for score.dedup")


class RunConfig(BaseModel):
    """Where the run writes and which stages it runs."""

    model_config = ConfigDict(extra="forbid")
    root: str = Field("runs/demo", description="run root: a local path or s3:// / gs:// URI")
    stages: list[str] = Field(
        default_factory=lambda: [s for s in available_stages() if s not in CURATION_STAGES]
    )
    ray_address: str | None = Field(None, description="Ray address; None attaches or starts local")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray instance (default all)")
    rows_per_part: int = Field(256, ge=1, description="rows per manifest Parquet part")
    broadcast_join_mb: float = Field(
        256,
        ge=0,
        description="upstream columns up to this size (estimated, MiB) are joined by broadcast "
        "instead of a hash shuffle; 0 always shuffles",
    )
    compact_target_mb: float = Field(
        128,
        ge=0,
        description="at each stage end, manifest parts under half this size (MiB) are merged into parts "
        "of about this size; 0 keeps the parts as written",
    )
    reuse_workers: bool = Field(
        True,
        description="model stages without a GPU run as tasks on Ray's reused worker processes (torch "
        "imported once per process for the run); false: an actor pool per stage, the model loaded in "
        "at most actors[1] processes",
    )
    progress_interval_s: float = Field(10.0, gt=0)
    stall_timeout_s: float = Field(
        600,
        ge=0,
        description="a stage whose plan moves nothing for this long stops, naming what it waits "
        "for (0: wait forever)",
    )
    demo_media: DemoMediaConfig | None = None
    storage: StorageSettings = Field(
        default_factory=StorageSettings, description="object-store endpoint, region, retries (no credentials)"
    )

    @field_validator("stages")
    @classmethod
    def _known_and_ordered(cls, names: list[str]) -> list[str]:
        known = available_stages()
        for n in names:
            if n not in known:
                raise ValueError(f"unknown stage {n!r}; available: {', '.join(known)}")
        if len(set(names)) != len(names):
            raise ValueError("a stage is listed twice")
        return sorted(names, key=STAGE_ORDER.index)


@cache
def config_model() -> type[BaseModel]:
    """The pydantic model of the whole config: ``run`` plus one section per available stage."""
    sections: dict[str, Any] = {"run": (RunConfig, RunConfig())}
    for name in available_stages():
        cfg_cls = get_stage_class(name).Config
        sections[name] = (cfg_cls, cfg_cls())
    return create_model(
        "PipelineConfig", __config__=ConfigDict(extra="forbid", validate_assignment=True), **sections
    )


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> BaseModel:
    """Read YAML (or defaults when ``path`` is None), apply overrides, validate; ``ConfigError`` if bad."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(shipped.config_path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    apply_overrides(data, overrides or [])
    try:
        return config_model().model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def section_hash(section: BaseModel) -> str:
    """A short stable hash of one config section (recorded in ``_SUCCESS.json``)."""
    blob = json.dumps(section.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
