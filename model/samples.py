"""One shard sample -> the tensors of its towers, and decoded samples -> one batch.

Runs in the DataLoader workers of ``model.data.ShardStream``. Every random choice of a sample (its
caption, its depth / IR frame, its crop and flip) is seeded from ``(seed, epoch, key)``, so it is the
same whichever worker decodes it, and a resumed run sees the same inputs.
"""

from __future__ import annotations

import json
import random
from typing import Any

import torch

from contracts.shard_format import AUDIO_KEY, JSON_KEY, frames_of

# Imported here, not in the workers: forked DataLoader workers inherit it instead of importing anew
# (torchvision and PyAV take seconds) at every epoch.
from model.preprocess import preprocess
from model.text_choice import NoText, choose_text, frame_for

# Model modality -> the shard's frame prefix (``audio`` is the ``flac`` member).
FRAME_MODALITY = {"video": "rgb", "depth": "depth", "infrared": "ir"}


def modality_source(sample: dict[str, Any], modality: str, frame: int) -> Any:
    """The shard bytes one tower needs: all RGB frames, the FLAC, or one depth / IR frame; None if absent."""
    if modality == "audio":
        return sample.get(AUDIO_KEY)
    frames = frames_of(sample, FRAME_MODALITY[modality])
    if not frames:
        return None
    return frames if modality == "video" else frames[min(frame, len(frames) - 1)]


def decode_sample(
    sample: dict[str, Any],
    sizes: dict[str, dict[str, Any]],
    *,
    modalities: list[str],
    text_field: str,
    mix: dict[str, float] | None,
    train: bool,
    augment: bool,
    seed: int,
    epoch: int,
    label_field: str | None = None,
) -> dict[str, Any]:
    """One undecoded shard sample -> ``{"key", "text", modality: tensor, ...}``; ``NoText`` when filtered.

    ``sizes``: ``tower_sizes``'s preprocess arguments per modality; ``text_field`` and ``mix`` as in
    ``DataConfig``; ``train`` picks random text and frames, ``augment`` random crops and flips.
    ``label_field``: also copy that JSON field (lists joined) as ``label``, for classification.
    """
    key = sample["__key__"]
    meta = json.loads(sample[JSON_KEY])
    rng = random.Random(f"{seed}:{epoch}:{key}")  # the same choices whichever worker decodes it
    text, ofa_index = choose_text(meta, text_field, rng, train=train, mix=mix)
    frame = frame_for(ofa_index, rng, train)
    generator = torch.Generator().manual_seed(rng.getrandbits(63))
    out: dict[str, Any] = {"key": key, "text": text}
    if label_field:
        value = meta.get(label_field)
        out["label"] = " ".join(map(str, value)) if isinstance(value, list) else str(value or "")
    for m in modalities:
        source = modality_source(sample, m, frame)
        if source is not None:
            out[m] = preprocess(m, source, **sizes[m], train=augment, generator=generator)
    if not any(m in out for m in modalities):
        raise NoText(f"{key}: none of {modalities} in the sample")
    return out


def input_shape(modality: str, size: dict[str, Any]) -> tuple[int, ...]:
    """The tensor shape one sample of ``modality`` decodes to (``preprocess``'s output)."""
    if modality == "audio":
        return (3, *size["image_size"])
    s = size["image_size"]
    return (size["num_frames"], 3, s, s) if modality == "video" else (3, s, s)


def collate(
    items: list[dict[str, Any]], modalities: list[str], sizes: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Stack decoded samples. With several modalities every one is present (zeros where a sample lacks
    it, so all ranks run the same towers and collectives) and ``valid[m]`` marks who has ``m``."""
    batch: dict[str, Any] = {"key": [i["key"] for i in items], "text": [i["text"] for i in items]}
    if items and "label" in items[0]:
        batch["label"] = [i["label"] for i in items]
    for m in modalities:
        have = [m in i for i in items]
        if not items or (len(modalities) == 1 and not any(have)):
            continue
        blank = torch.zeros(input_shape(m, sizes[m]))
        batch[m] = torch.stack([i.get(m, blank) for i in items])
        if len(modalities) > 1:
            batch.setdefault("valid", {})[m] = torch.tensor(have)
    return batch
