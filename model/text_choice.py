"""Which caption of a shard sample a batch trains on: one JSON field, or LanguageBind's ``mix``.

``mix`` draws a source per sample and step: by default 0.2 each for ``raw``, ``mplug``,
``polish_mplug`` and ``sound_mplug`` and 0.2 for ``ofa``, split evenly over the per-frame captions
(0.025 each for 8 frames). A source the sample lacks is dropped and the rest renormalised. When an
OFA caption ``i`` is drawn, single-frame modalities (depth, infrared) take frame ``i``, so the
caption describes the very frame the tower sees.
"""

from __future__ import annotations

import random
from typing import Any

from contracts.shard_format import LIST_TEXT_FIELDS, NUM_FRAMES
from contracts.shard_format import TEXT_FIELDS as JSON_TEXT_FIELDS

TEXT_FIELDS = ("title", *JSON_TEXT_FIELDS, *LIST_TEXT_FIELDS, "mix")
LANGUAGEBIND_MIX = {"raw": 0.2, "mplug": 0.2, "polish_mplug": 0.2, "sound_mplug": 0.2, "ofa": 0.2}


class NoText(ValueError):
    """The sample has no usable text (or modality) for this run: filtered, not an error."""


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def text_options(
    meta: dict[str, Any], field: str, mix: dict[str, float] | None = None
) -> list[tuple[float, str, int | None]]:
    """``(weight, text, ofa_index)`` candidates of one sample for ``field`` (several for ``ofa``/``mix``)."""
    if field == "mix":
        weights = mix or LANGUAGEBIND_MIX
        out = []
        for name, weight in weights.items():
            if name not in TEXT_FIELDS or name == "mix":
                raise ValueError(f"mix: unknown text field {name!r}")
            options = text_options(meta, name)
            if name in LIST_TEXT_FIELDS:  # each frame's caption has a fixed slot: 0.2 / 8 = 0.025
                options = [(1.0 / NUM_FRAMES, t, i) for _, t, i in options]
            out += [(weight * w, t, i) for w, t, i in options]
        return [o for o in out if o[0] > 0]
    if field in LIST_TEXT_FIELDS:
        captions = meta.get(field) or []
        present = [(i, t) for i, c in enumerate(captions) if (t := _text(c))]
        return [(1.0 / len(present), t, i) for i, t in present]
    text = _text(meta.get(field))
    return [(1.0, text, None)] if text else []


def choose_text(
    meta: dict[str, Any],
    field: str,
    rng: random.Random,
    train: bool = True,
    mix: dict[str, float] | None = None,
) -> tuple[str, int | None]:
    """The caption to pair with this sample, and the OFA frame index when it is a per-frame caption.

    Training draws from the candidates by weight; evaluation is deterministic (the middle frame's
    caption for ``ofa``; ``mix`` still draws, from the sample-seeded ``rng``). ``NoText`` if none.
    """
    options = text_options(meta, field, mix)
    if not options:
        raise NoText(f"{meta.get('video_id')}: no {field!r} text")
    if field in LIST_TEXT_FIELDS and not train:
        middle = min(options, key=lambda o: abs(o[2] - NUM_FRAMES // 2))
        return middle[1], middle[2]
    if len(options) == 1:
        return options[0][1], options[0][2]
    _, text, index = rng.choices(options, weights=[o[0] for o in options])[0]
    return text, index


def frame_for(ofa_index: int | None, rng: random.Random, train: bool) -> int:
    """The frame a single-frame modality uses: the OFA caption's frame, else random (train) or middle."""
    if ofa_index is not None:
        return ofa_index
    return rng.randrange(NUM_FRAMES) if train else NUM_FRAMES // 2
