"""Released LanguageBind checkpoints in, and back out: ``LanguageBind.load`` and ``model.convert`` use these.

A released checkpoint is a directory (or a hub repo fetched through ``huggingface_hub``, so its cache and
``HF_HUB_OFFLINE`` apply) holding ``config.json``, ``pytorch_model.bin`` (or safetensors, or shards of
either) and CLIP tokenizer files. Loading builds vidal's module tree from the config (``official_config``),
renames the weights (``official_keys``), merges LoRA, and checks the result strictly: every weight the
tower needs must be there and nothing may be left over, and the error names the keys in the official
spelling. Several checkpoints load into one model; the official towers share a frozen text encoder, so
their text weights are compared and the one used is named when they differ.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from model.model_config import LANGUAGEBIND_PREFIX, ModelConfig, TextConfig, TowerConfig
from model.official_config import (
    modality_of,
    official_config,
    text_clip_config,
    tower_config,
    vision_settings,
)
from model.official_keys import (
    IGNORED_SUFFIXES,
    merge_peft_lora,
    official_to_vidal,
    to_official_value,
    to_vidal_value,
    vidal_to_official,
)

CONFIG = "config.json"
OFFICIAL_WEIGHTS = "pytorch_model.bin"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TEXT_KEYS = ("text_model.", "text_projection.")


@dataclass
class Checkpoint:
    """One released checkpoint read from disk."""

    modality: str
    path: Path
    config: dict[str, Any]
    state: dict[str, torch.Tensor]


def resolve_checkpoint_dir(source: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local directory as is; a hub id (``owner/name``) through ``huggingface_hub.snapshot_download``."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if not _HUB_ID.match(str(source)):
        raise FileNotFoundError(
            f"{source}: no such directory (and not a hub id such as LanguageBind/LanguageBind_Image)"
        )
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.bin", "*.safetensors", "*.model"]
    try:
        return Path(snapshot_download(repo_id=str(source), cache_dir=cache_dir, allow_patterns=patterns))
    except Exception as e:  # offline with no cached snapshot, unknown repo, no network
        raise FileNotFoundError(
            f"{source}: not a local directory, and the hub could not provide it: {e}"
        ) from e


def read_official_config(source: str | Path, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Only the ``config.json`` of a released checkpoint (a hub id fetches that one file)."""
    path = Path(source).expanduser()
    if path.exists():
        if not (path / CONFIG).exists():
            raise FileNotFoundError(f"{path}: no config.json; not a LanguageBind checkpoint directory")
        return json.loads((path / CONFIG).read_text())
    if not _HUB_ID.match(str(source)):
        raise FileNotFoundError(
            f"{source}: no such directory (and not a hub id such as LanguageBind/LanguageBind_Image)"
        )
    from huggingface_hub import hf_hub_download

    try:
        return json.loads(Path(hf_hub_download(str(source), CONFIG, cache_dir=cache_dir)).read_text())
    except Exception as e:
        raise FileNotFoundError(
            f"{source}: not a local directory, and the hub could not provide it: {e}"
        ) from e


def released_tower(source: str | Path) -> tuple[str, dict[str, Any]]:
    """``(modality, TowerConfig fields)`` of a released checkpoint, from its config alone."""
    config = read_official_config(source)
    modality = modality_of(config, source)
    return modality, tower_config(config, modality, source)


def looks_like_hub_id(source: str | Path) -> bool:
    """``owner/name`` that is not a local path."""
    return bool(_HUB_ID.match(str(source))) and not Path(source).exists()


def is_official_dir(path: Path) -> bool:
    """True when ``path/config.json`` is a released LanguageBind config (it names a ``model_type``)."""
    config = path / CONFIG
    return config.exists() and "model_type" in json.loads(config.read_text())


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint directory: safetensors or ``pytorch_model.bin``, whole or sharded."""
    for name, loader in (("model.safetensors", load_file), (OFFICIAL_WEIGHTS, _torch_load)):
        if (path / name).exists():
            return loader(str(path / name))
        index = path / f"{name}.index.json"
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(loader(str(path / shard)))
            return state
    raise FileNotFoundError(f"{path}: no pytorch_model.bin or model.safetensors (nor a sharded index)")


def _torch_load(file: str) -> dict[str, torch.Tensor]:
    return torch.load(file, map_location="cpu", weights_only=True)


def read_checkpoint(source: str | Path, cache_dir: str | Path | None = None) -> Checkpoint:
    """Read one released checkpoint, LoRA (peft layout) merged into the base weights."""
    path = resolve_checkpoint_dir(source, cache_dir)
    if not (path / CONFIG).exists():
        raise FileNotFoundError(f"{path}: no config.json; not a LanguageBind checkpoint directory")
    config = json.loads((path / CONFIG).read_text())
    modality = modality_of(config, path)
    state, _ = merge_peft_lora(read_weights(path), float(vision_settings(config, modality)["lora_alpha"]))
    return Checkpoint(modality, path, config, state)


Sources = Mapping[str | None, str | Path] | Sequence[tuple[str | None, str | Path]]


def load_official(
    sources: Sources,
    text_from: str | None = None,
    cache_dir: str | Path | None = None,
) -> Any:
    """One ``LanguageBind`` from released checkpoints ``{modality or None: id_or_dir}`` (or such pairs).

    The text tower comes from ``text_from`` (a modality) or the first checkpoint; when another
    checkpoint's text weights differ, a warning says which one is used. Preprocessing defaults to the
    official processors (``preprocess: languagebind``).
    """
    from model.languagebind import LanguageBind

    checkpoints: dict[str, Checkpoint] = {}
    for given, source in sources.items() if isinstance(sources, Mapping) else sources:
        ckpt = read_checkpoint(source, cache_dir)
        if given is not None and given != ckpt.modality:
            raise ValueError(
                f"{source} is a {ckpt.config['model_type']} checkpoint ({ckpt.modality}), given as {given!r}"
            )
        if ckpt.modality in checkpoints:
            raise ValueError(
                f"two {ckpt.modality} checkpoints: {checkpoints[ckpt.modality].path} and {ckpt.path}"
            )
        checkpoints[ckpt.modality] = ckpt
    if not checkpoints:
        raise ValueError("no LanguageBind checkpoint given")
    text_modality = text_from or next(iter(checkpoints))
    if text_modality not in checkpoints:
        raise ValueError(f"text_from={text_from!r}: no such checkpoint among {list(checkpoints)}")
    text_ckpt = checkpoints[text_modality]
    _check_text_agreement(checkpoints, text_ckpt)
    projection_dim = text_clip_config(text_ckpt.config)["projection_dim"]
    modalities = {m: tower_config(c.config, m, c.path) for m, c in checkpoints.items()}
    for ckpt in checkpoints.values():
        dim = ckpt.config.get("projection_dim", projection_dim)
        if dim != projection_dim:
            raise ValueError(
                f"{ckpt.path}: projection_dim {dim} differs from the text tower's {projection_dim}"
            )
    config = ModelConfig(
        embed_dim=projection_dim,
        preprocess="languagebind",
        text=TextConfig(name_or_path=str(text_ckpt.path), clip_config=text_clip_config(text_ckpt.config)),
        modalities=modalities,
    )
    model = LanguageBind.from_config(config)
    _load_strict(model, checkpoints, text_ckpt)
    return model.eval()


def _text_weights(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    return {
        k: v for k, v in ckpt.state.items() if k.startswith(_TEXT_KEYS) and not k.endswith(IGNORED_SUFFIXES)
    }


def _check_text_agreement(checkpoints: dict[str, Checkpoint], used: Checkpoint) -> None:
    reference = _text_weights(used)
    for ckpt in checkpoints.values():
        if ckpt is used:
            continue
        theirs = _text_weights(ckpt)
        differ = sorted(
            k
            for k in reference.keys() | theirs.keys()
            if k not in reference
            or k not in theirs
            or reference[k].shape != theirs[k].shape
            or not torch.equal(reference[k].float(), theirs[k].float())
        )
        if differ:
            warnings.warn(
                f"text towers differ: using the {used.modality} checkpoint's ({used.path}); the {ckpt.modality} "
                f"checkpoint ({ckpt.path}) differs in {len(differ)} text weights (e.g. {differ[:3]}), so its "
                f"embeddings will not match the official {ckpt.modality} model's own text tower exactly",
                stacklevel=3,
            )


def _load_strict(model: Any, checkpoints: dict[str, Checkpoint], text_ckpt: Checkpoint) -> None:
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unexpected: list[str] = []
    for modality, ckpt in checkpoints.items():
        for key, value in ckpt.state.items():
            if key.startswith(_TEXT_KEYS) and ckpt is not text_ckpt:
                continue
            name = official_to_vidal(key, modality)
            if name is None:
                continue
            if name not in expected:
                unexpected.append(f"{ckpt.path.name}:{key}")
                continue
            state[name], origin[name] = to_vidal_value(key, value), f"{ckpt.path.name}:{key}"
    missing = [
        f"{_owner(k, checkpoints, text_ckpt)}:{vidal_to_official(k) or k}"
        for k in expected
        if k not in state and not k.startswith("logit_bias")
    ]
    if missing or unexpected:
        raise KeyError(f"checkpoint does not fit its config: missing {missing}, unexpected {unexpected}")
    wrong = [
        f"{origin[k]} {tuple(v.shape)} (config wants {tuple(expected[k].shape)})"
        for k, v in state.items()
        if v.shape != expected[k].shape
    ]
    if wrong:
        raise ValueError(f"checkpoint weights do not have the shapes its config gives: {wrong}")
    model.load_state_dict(state, strict=False)


def _owner(key: str, checkpoints: dict[str, Checkpoint], text_ckpt: Checkpoint) -> str:
    match = re.match(r"^(?:towers|logit_scale)\.(\w+)", key)
    ckpt = checkpoints.get(match[1]) if match else text_ckpt
    return (ckpt or text_ckpt).path.name


def init_from_languagebind(config: ModelConfig) -> Any:
    """``init_from: languagebind:<id or dir>``: the released tower and its text encoder, with the config's
    training settings (LoRA, patch dropout, trainable parts) on top; architecture from the checkpoint."""
    from model.languagebind import LanguageBind

    source = config.init_from[len(LANGUAGEBIND_PREFIX) :]  # type: ignore[index]
    loaded = load_official({None: source})
    (modality,) = loaded.modalities
    if set(config.modalities) != {modality}:
        raise ValueError(
            f"init_from {source} is a {modality} tower; model.modalities must name exactly it "
            f"(it names {list(config.modalities)})"
        )
    wanted = config.modalities[modality]
    tower = loaded.towers[modality]
    cfg = TowerConfig.model_validate(
        {
            **tower.cfg.model_dump(),
            "lora": wanted.lora.model_dump(),
            "patch_dropout": wanted.patch_dropout,
            "trainable": wanted.trainable,
        }
    )
    tower.cfg = cfg
    tower.patch_dropout.p = cfg.patch_dropout
    tower.add_lora()
    resolved = loaded.config.model_copy(
        update={
            "modalities": {modality: cfg},
            "loss": config.loss,
            "preprocess": config.preprocess,
            "init_from": None,
        }
    )
    model = LanguageBind(resolved, loaded.text, {modality: tower})
    if config.loss == "clip":  # the released temperature; SigLIP starts from its own
        model.logit_scale[modality].data.copy_(loaded.logit_scale[modality].data)
    return model


def export_official(model: Any, out: str | Path, modality: str | None = None) -> Path:
    """Write one tower of a vidal model in the released layout (``config.json``, ``pytorch_model.bin`` with
    the official key set, CLIP tokenizer files), LoRA merged, for the official classes to load."""
    from model.text import save_clip_tokenizer

    if modality is None:
        if len(model.modalities) != 1:
            raise ValueError(f"the model has towers {list(model.modalities)}; name the one to export")
        modality = model.modalities[0]
    if modality not in model.towers:
        raise KeyError(f"no {modality!r} tower; this model has {list(model.modalities)}")
    if model.text.pooling != "clip" or model.text.projection is None:
        raise ValueError("the official layout needs a CLIP text tower (pooling clip, with a projection)")
    if any(".lora_" in k for k in model.state_dict()):
        model = copy.deepcopy(model).merge_lora()
    cfg = model.towers[modality].cfg
    text_config = model.config.text.clip_config or model.text.encoder.config.to_dict()
    projection_dim = model.text.projection.out_features
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith(("towers.", "logit_scale.")) and not key.startswith(
            (f"towers.{modality}.", f"logit_scale.{modality}")
        ):
            continue
        name = vidal_to_official(key)
        if name is not None:
            state[name] = (
                to_official_value(name, value.detach().cpu().float(), cfg.frame_class_embedding)
                .contiguous()
                .clone()
            )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = official_config(modality, cfg, text_config, projection_dim)
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    torch.save(state, out / OFFICIAL_WEIGHTS)
    save_clip_tokenizer(model.text.tokenizer, out)
    return out


def convert_to_vidal(sources: Sources, out: str | Path, text_from: str | None = None) -> Path:
    """Released checkpoint(s) -> a vidal export directory (``LanguageBind.save``)."""
    return load_official(sources, text_from=text_from).save(out)
