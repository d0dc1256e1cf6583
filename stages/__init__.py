"""Pipeline stages, one module each, in the order the VIDAL recipe runs them.

The registry maps a stage name to its class; a stage whose module is absent is simply not
available (the runner and the config only offer available stages).
"""

from __future__ import annotations

import importlib
import importlib.util
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stages.base import Stage

# name -> "module:Class", in pipeline order
STAGE_PATHS: dict[str, str] = {
    "discover": "stages.discover:DiscoverStage",
    "download": "stages.download:DownloadStage",
    "probe": "stages.probe:ProbeStage",
    "clip": "stages.clip:ClipStage",
    "caption": "stages.caption:CaptionStage",
    "asr": "stages.asr:AsrStage",
    "enhance": "stages.enhance:EnhanceStage",
    "depth": "stages.depth:DepthStage",
    "infrared": "stages.infrared:InfraredStage",
    "score": "stages.score:ScoreStage",
    "shard": "stages.shard:ShardStage",
}
STAGE_ORDER = tuple(STAGE_PATHS)
CURATION_STAGES = frozenset({"clip", "score"})  # beyond the VIDAL recipe: run only when listed in run.stages


@cache
def available_stages() -> tuple[str, ...]:
    """Names of the stages whose module is present, in pipeline order."""
    return tuple(n for n, p in STAGE_PATHS.items() if importlib.util.find_spec(p.split(":")[0]))


def get_stage_class(name: str) -> type[Stage]:
    """The stage class registered under ``name``; a clear error for unknown names."""
    if name not in available_stages():
        raise KeyError(f"unknown stage {name!r}; available: {', '.join(available_stages())}")
    module, cls = STAGE_PATHS[name].split(":")
    return getattr(importlib.import_module(module), cls)
