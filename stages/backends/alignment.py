"""Alignment models for the score stage: one embedding per clip and one per text, in the same space.

Families (``score.model``):

- ``languagebind:<hub id or dir>``: a released LanguageBind checkpoint (official layout), video tower over
  the clip's frames and the text tower, through ``model.languagebind.LanguageBind.load`` (which runs the
  official processors for a released model).
- ``vidal:<export dir>``: a model trained by ``model.train`` and exported with ``LanguageBind.save`` (same
  loader, vidal's own preprocessing).
- ``hf:<CLIP id or dir>``: any transformers ``CLIPModel``; a clip's embedding is the mean of its frames'
  image embeddings (normalised again), the fallback when no video-text model is at hand.
- ``tiny``: a tiny random LanguageBind video model (fixed seed) for the offline demo; its scores carry no
  meaning and the stage's ``models`` entry says so.

Every embedding is L2-normalised float32 on the CPU, so a score is a dot product.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from contracts.backends import ModelLoadError, ModelSpec, register
from stages.backends.batching import autocast

TINY_SEED = 0


class LanguageBindAligner:
    """The video and text towers of a LanguageBind model (released, vidal-trained, or tiny)."""

    def __init__(self, model: Any, device: torch.device, dtype: torch.dtype | None, batch: int):
        if "video" not in model.modalities:
            raise ModelLoadError(f"alignment model: no video tower (it has {', '.join(model.modalities)})")
        self.model = model.to(device).eval()
        self.device, self.dtype, self.batch = device, dtype, batch

    def embed_clips(self, clips: Sequence[Sequence[bytes]]) -> torch.Tensor:
        with autocast(self.device, self.dtype):
            return self.model.encode("video", [list(c) for c in clips], batch_size=self.batch).float()

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        with autocast(self.device, self.dtype):
            emb = self.model.encode_text(list(texts), batch_size=max(self.batch, 64))
        return F.normalize(emb.float(), dim=-1)


class ClipFramesAligner:
    """A transformers CLIP image-text model: the mean of per-frame image embeddings against the text's."""

    def __init__(self, spec: ModelSpec, device: torch.device, dtype: torch.dtype | None, batch: int):
        from transformers import AutoTokenizer, CLIPModel

        try:
            self.model = CLIPModel.from_pretrained(spec.name).to(device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(spec.name)
        except (OSError, ValueError) as e:
            raise spec.error(f"is not a loadable CLIP model: {' '.join(str(e).split())[:300]}") from None
        self.size = int(self.model.config.vision_config.image_size)
        self.max_len = int(self.model.config.text_config.max_position_embeddings)
        self.device, self.dtype, self.batch = device, dtype, batch

    @staticmethod
    def _features(out: Any) -> torch.Tensor:
        # transformers 5 returns a model output from get_*_features; older ones a tensor
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    @torch.no_grad()
    def embed_clips(self, clips: Sequence[Sequence[bytes]]) -> torch.Tensor:
        from model.preprocess import preprocess

        frames = [f for c in clips for f in c]
        parts = []
        for s in range(0, len(frames), self.batch):
            pixels = torch.stack(
                [preprocess("image", f, image_size=self.size) for f in frames[s : s + self.batch]]
            )
            with autocast(self.device, self.dtype):
                feats = self._features(self.model.get_image_features(pixel_values=pixels.to(self.device)))
            parts.append(F.normalize(feats.float(), dim=-1).cpu())
        per_frame = torch.cat(parts) if parts else torch.empty(0, self.model.config.projection_dim)
        sizes = [len(c) for c in clips]
        means = [chunk.mean(0) for chunk in per_frame.split(sizes)]
        return F.normalize(torch.stack(means), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        parts = []
        for s in range(0, len(texts), 256):
            tok = self.tokenizer(
                list(texts[s : s + 256]),
                padding=True,
                truncation=True,
                max_length=self.max_len,
                return_tensors="pt",
            ).to(self.device)
            with autocast(self.device, self.dtype):
                feats = self._features(self.model.get_text_features(**tok))
            parts.append(F.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(parts) if parts else torch.empty(0, self.model.config.projection_dim)


Aligner = LanguageBindAligner | ClipFramesAligner


def _check_dir(spec: ModelSpec, **_: Any) -> None:
    # a local directory must hold a config; a hub id is checked by its loader (cache or hub)
    path = Path(spec.name)
    if spec.family == "vidal" or spec.name.startswith(("/", ".")) or path.exists():
        if not (path / "config.json").is_file():
            raise spec.error(f"{spec.name} holds no config.json")


def _load_languagebind(
    spec: ModelSpec, device: torch.device, dtype: torch.dtype | None, *, model_batch: int = 32, **_: Any
) -> Aligner:
    from model.languagebind import LanguageBind

    try:
        model = LanguageBind.load(spec.name)
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        raise spec.error(f"cannot be loaded: {' '.join(str(e).split())[:300]}") from None
    return LanguageBindAligner(model, device, dtype, model_batch)


register("alignment", "languagebind", usage="languagebind:<hub id or dir>", check=_check_dir)(
    _load_languagebind
)
register("alignment", "vidal", usage="vidal:<export dir>", check=_check_dir)(_load_languagebind)


@register("alignment", "hf", usage="hf:<CLIP hub id or dir>", check=_check_dir)
def _load_clip(
    spec: ModelSpec, device: torch.device, dtype: torch.dtype | None, *, model_batch: int = 32, **_: Any
) -> Aligner:
    return ClipFramesAligner(spec, device, dtype, model_batch)


@register(
    "alignment", "tiny", usage="tiny (random weights: for tests and the offline demo)", variants=("video",)
)
def _load_tiny(
    spec: ModelSpec, device: torch.device, dtype: torch.dtype | None, *, model_batch: int = 32, **_: Any
) -> Aligner:
    from model.languagebind import LanguageBind

    torch.manual_seed(TINY_SEED)
    return LanguageBindAligner(LanguageBind.tiny(("video",)), device, dtype, model_batch)
