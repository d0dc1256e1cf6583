"""``LanguageBind``: the frozen text tower, the modality towers and a learnable temperature per
modality, with the training forward, optimizer groups, inference helpers and save/load."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from model.lora import is_lora_parameter, merge_lora
from model.model_config import (
    CLIP_LOGIT_SCALE_INIT,
    LANGUAGEBIND_PREFIX,
    LOGIT_SCALE_MAX,
    MODALITIES,
    SIGLIP_LOGIT_BIAS_INIT,
    SIGLIP_LOGIT_SCALE_INIT,
    LoraSettings,
    ModelConfig,
    tiny_config,
)
from model.preprocess import preprocess
from model.text import TextTower, save_clip_tokenizer
from model.towers import build_towers
from model.vision import ModalityTower

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TEXT_DIR = "text"


class LanguageBind(nn.Module):
    """Modality towers bound to a frozen text tower; see ``model/__init__.py`` for the API tour."""

    def __init__(self, config: ModelConfig, text: TextTower, towers: dict[str, ModalityTower]) -> None:
        super().__init__()
        self.config = config
        self.text = text
        self.towers = nn.ModuleDict(towers)
        siglip = config.loss == "siglip"
        scale = SIGLIP_LOGIT_SCALE_INIT if siglip else CLIP_LOGIT_SCALE_INIT
        # One temperature per modality: LanguageBind trains each modality against text on its own.
        self.logit_scale = nn.ParameterDict({m: nn.Parameter(torch.tensor(scale)) for m in towers})
        self.logit_bias = (
            nn.ParameterDict({m: nn.Parameter(torch.tensor(SIGLIP_LOGIT_BIAS_INIT)) for m in towers})
            if siglip
            else None
        )

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: ModelConfig | dict[str, Any] | str | Path) -> LanguageBind:
        """Build from a ``ModelConfig``, a dict, or a YAML path: random towers, ``init_from`` a CLIP
        checkpoint, or ``init_from: languagebind:<id or dir>`` (a released tower, LoRA from the config on top)."""
        config = ModelConfig.load(config)
        if config.init_from and config.init_from.startswith(LANGUAGEBIND_PREFIX):
            from model.official import init_from_languagebind

            return init_from_languagebind(config)
        text, towers, resolved = build_towers(config)
        return cls(resolved, text, towers)

    @classmethod
    def tiny(
        cls, modalities: Iterable[str] = MODALITIES, overrides: dict[str, Any] | None = None
    ) -> LanguageBind:
        """A tiny random model for tests; ``overrides`` (a partial config dict) is merged in."""
        return cls.from_config(tiny_config(tuple(modalities), overrides))

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities this model has towers for."""
        return tuple(self.towers.keys())

    @property
    def device(self) -> torch.device:
        """Device of the modality towers."""
        return next(self.towers.parameters()).device

    # -- training surface -------------------------------------------------------------------
    def logit_scale_of(self, modality: str) -> torch.Tensor:
        """``exp(t)`` for ``modality``, never above 100."""
        return self.logit_scale[modality].clamp(max=LOGIT_SCALE_MAX).exp()

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Clamp every ``t`` to ``[0, ln 100]`` in place; call after each optimizer step (as open_clip)."""
        for p in self.logit_scale.values():
            p.clamp_(0, LOGIT_SCALE_MAX)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch``: ``text`` (list of str) or ``text_emb`` (``[B, E]``), plus any modality tensors.

        Returns normalised ``[B, E]`` embeddings under ``text`` and each modality present, and
        ``logit_scale`` (and ``logit_bias`` for SigLIP) as dicts keyed by modality.
        """
        out: dict[str, Any] = {}
        if "text_emb" in batch:
            out["text"] = F.normalize(batch["text_emb"].to(self.device).float(), dim=-1)
        elif "text" in batch:
            out["text"] = self.text(batch["text"]).to(self.device)
        present = [m for m in self.towers if m in batch]
        for modality in present:
            out[modality] = F.normalize(self.towers[modality](batch[modality]), dim=-1)
        out["logit_scale"] = {m: self.logit_scale_of(m) for m in present}
        if self.logit_bias is not None:
            out["logit_bias"] = {m: self.logit_bias[m] for m in present}
        return out

    def param_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Trainable parameters split as ``lora`` (LoRA matrices) and ``other`` (class embedding,
        patch embedding, norms, temporal, projections, logit scale/bias: the ``lr x coef_lr`` set)."""
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {"lora": [], "other": []}
        for name, param in self.named_parameters():
            if param.requires_grad:
                groups["lora" if is_lora_parameter(name) else "other"].append((name, param))
        return groups

    def optimizer_groups(self, lr: float, weight_decay: float, coef_lr: float = 1.0) -> list[dict[str, Any]]:
        """AdamW groups: LoRA at ``lr``, the rest at ``lr * coef_lr``; no decay on biases, norms,
        embeddings and logit scale/bias. Each group has ``lr_scale`` for schedulers to keep."""
        out = []
        for kind, named in self.param_groups().items():
            scale = 1.0 if kind == "lora" else coef_lr
            decay = [p for n, p in named if not _no_decay(n, p)]
            no_decay = [p for n, p in named if _no_decay(n, p)]
            for suffix, params, wd in (("decay", decay, weight_decay), ("no_decay", no_decay, 0.0)):
                if params:
                    out.append(
                        {
                            "name": f"{kind}/{suffix}",
                            "params": params,
                            "lr": lr * scale,
                            "lr_scale": scale,
                            "weight_decay": wd,
                        }
                    )
        return out

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each tower layer in backward (less activation memory, ~30% more compute)."""
        for tower in self.towers.values():
            tower.gradient_checkpointing = enabled

    def merge_lora(self) -> LanguageBind:
        """Fold LoRA into the base weights (state dict becomes plain transformers names); in place."""
        for name, tower in self.towers.items():
            merge_lora(tower)
            cfg = tower.cfg.model_copy(update={"lora": LoraSettings(r=0, alpha=tower.cfg.lora.alpha)})
            tower.cfg = cfg
            self.config.modalities[name] = cfg
            tower.apply_trainable()
        return self

    # -- inference ---------------------------------------------------------------------------
    def preprocess_input(
        self,
        modality: str,
        item: Any,
        train: bool = False,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> torch.Tensor:
        """One raw input (path, shard bytes, frame list, waveform) -> the tower's input tensor, by
        ``config.preprocess``; ``options`` (``flip``, ``antialias``) are the official mode's."""
        cfg = self.towers[modality].cfg
        if self.config.preprocess == "languagebind":
            from model.official_preprocess import official_preprocess

            return official_preprocess(modality, item, cfg, train=train, generator=generator, **options)
        if options:
            raise TypeError(f"{sorted(options)} apply to preprocess: languagebind only")
        size = cfg.image_size if modality == "audio" else cfg.image_size[0]
        return preprocess(
            modality, item, image_size=size, num_frames=cfg.num_frames, train=train, generator=generator
        )

    @torch.no_grad()
    def encode(
        self, modality: str, inputs: torch.Tensor | Sequence[Any], batch_size: int = 32
    ) -> torch.Tensor:
        """Normalised embeddings ``[N, E]`` (on CPU) of a batch tensor or a list of raw inputs.

        Runs in eval mode without gradients, ``batch_size`` inputs at a time; raw inputs are decoded
        per chunk, so only one chunk of pixels is in memory at once.
        """
        if modality not in self.towers:
            raise KeyError(f"no {modality!r} tower; this model has {list(self.towers)}")
        tower = self.towers[modality]
        was_training = tower.training
        tower.eval()
        dtype = next(tower.parameters()).dtype
        try:
            out = []
            for start in range(0, len(inputs), batch_size):
                chunk = inputs[start : start + batch_size]
                if not isinstance(chunk, torch.Tensor):
                    chunk = torch.stack([self.preprocess_input(modality, item) for item in chunk])
                emb = tower(chunk.to(self.device, dtype))
                out.append(F.normalize(emb.float(), dim=-1).cpu())
        finally:
            tower.train(was_training)
        if not out:
            return torch.empty(0, self.text.dim)
        return torch.cat(out)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Normalised text embeddings ``[N, E]`` (on CPU), through the caption cache."""
        if isinstance(texts, str):
            texts = [texts]
        parts = [self.text(list(texts[i : i + batch_size])).cpu() for i in range(0, len(texts), batch_size)]
        return torch.cat(parts) if parts else torch.empty(0, self.text.dim)

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path, include_text: bool | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to directory ``path``.

        The frozen text encoder is written only when it cannot be rebuilt from its name: the tiny
        random one (its weights go into the safetensors) or ``include_text=True`` (saved under
        ``text/`` with its tokenizer, and the config points there: a self-contained export).
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = self.config.model_copy(deep=True)
        tiny_text = config.text.name_or_path == "tiny"
        # A text tower built from a CLIP config (released LanguageBind weights): weights go into the
        # safetensors like the tiny one's, its tokenizer under text/.
        config_text = config.text.clip_config is not None
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if config_text:
            save_clip_tokenizer(self.text.tokenizer, path / TEXT_DIR)
            config.text.name_or_path = TEXT_DIR
        elif include_text and not tiny_text:
            if self.text.projection is not None and hasattr(self.text.encoder.config, "projection_dim"):
                # so that the CLIP text loader builds the projection at its real size (weights: ours)
                self.text.encoder.config.projection_dim = self.text.projection.out_features
            self.text.encoder.save_pretrained(path / TEXT_DIR)
            self.text.tokenizer.save_pretrained(path / TEXT_DIR)
            config.text.name_or_path = TEXT_DIR
            config.text.pooling = self.text.pooling
        if not tiny_text and not config_text:
            # The projection of a CLIP text tower stays: save_pretrained above holds the encoder only.
            state = {k: v for k, v in state.items() if not k.startswith("text.encoder.")}
        save_file(state, str(path / WEIGHTS_FILE))
        (path / CONFIG_FILE).write_text(json.dumps(config.model_dump(mode="json"), indent=2) + "\n")
        return path

    @classmethod
    def load(
        cls,
        path: str | Path | Mapping[str, str | Path],
        map_location: str | torch.device = "cpu",
        *,
        text_from: str | None = None,
        cache_dir: str | Path | None = None,
    ) -> LanguageBind:
        """A model from a directory written by ``save``, a released LanguageBind checkpoint (hub id such as
        ``LanguageBind/LanguageBind_Video_FT`` or a directory in the official layout), or a mapping
        ``{modality: id_or_dir}`` of released checkpoints bound to one text tower (``text_from`` picks
        whose; default the first). Strict: a missing or unexpected weight fails, naming the keys.
        Hub ids go through ``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE``, ``cache_dir``)."""
        from model.official import is_official_dir, load_official, resolve_checkpoint_dir

        if isinstance(path, Mapping):
            return load_official(path, text_from=text_from, cache_dir=cache_dir).to(map_location)
        path = resolve_checkpoint_dir(path, cache_dir)
        if is_official_dir(path):
            return load_official({None: path}, cache_dir=cache_dir).to(map_location)
        data = json.loads((path / CONFIG_FILE).read_text())
        config_text = data["text"].get("clip_config") is not None
        if data["text"]["name_or_path"] == TEXT_DIR:
            data["text"]["name_or_path"] = str(path / TEXT_DIR)
        model = cls.from_config(data)
        state = load_file(str(path / WEIGHTS_FILE), device=str(map_location))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if not config_text:
            missing = [k for k in missing if not k.startswith("text.encoder.")]
        if missing or unexpected:
            raise RuntimeError(
                f"{path / WEIGHTS_FILE} does not fit the config: missing {missing}, unexpected {unexpected}"
            )
        return model.to(map_location)


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norms, token/position/time embeddings and logit scale/bias get no weight decay (the
    patch embedding is a conv kernel and does)."""
    embedding = any(k in name for k in ("class_embedding", "position_embedding", "time_embedding"))
    return param.ndim < 2 or embedding or "norm" in name or name.startswith("logit_")


def similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity matrix ``[len(a), len(b)]``."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T


@torch.no_grad()
def zero_shot_classify(
    model: LanguageBind,
    modality: str,
    inputs: torch.Tensor | Sequence[Any],
    class_names: Sequence[str],
    templates: Sequence[str] = ("{}",),
    batch_size: int = 32,
) -> torch.Tensor:
    """Class probabilities ``[N, C]``: each class is the mean of its normalised template embeddings
    (CLIP's prompt ensembling); logits are the modality's learned scale times cosine similarity."""
    prompts = [t.format(c) for c in class_names for t in templates]
    text = model.encode_text(prompts).view(len(class_names), len(templates), -1)
    classes = F.normalize(F.normalize(text, dim=-1).mean(dim=1), dim=-1)
    emb = model.encode(modality, inputs, batch_size)
    scale = model.logit_scale_of(modality).detach().float().cpu()
    return (scale * similarity(emb, classes)).softmax(dim=-1)
