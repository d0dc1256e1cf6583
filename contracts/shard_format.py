"""The shard format: the one contract between the pipeline's shard writer and the trainer's reader.

One WebDataset sample per video, keyed by ``video_id``::

    rgb.0.jpg … rgb.7.jpg     RGB frames (JPEG, short side 256)
    depth.0.png … depth.7.png depth in millimetres (uint16 PNG, clipped at 10 m)
    ir.0.jpg … ir.7.jpg       thermal infrared (8-bit single-channel JPEG)
    flac                      16 kHz mono audio (absent when the video has none)
    mp4                       the source video (optional)
    txt                       one caption (UTF-8): ``shard.txt_field``, else the first of ``TXT_FALLBACK``
    json                      text and metadata (``JSON_FIELDS``)

``txt`` is what open_clip's and video2dataset's WebDataset loaders read as a sample's caption (their
``"txt"`` key), so they read vidal tars unchanged; a sample with no text at all has no ``txt``.
Beside each ``{name}.tar`` the writer puts ``{name}.parquet`` (one row per sample: key, url, status
and the caption fields) and ``{name}_stats.json`` (``stats_name``: count, bytes, how many samples hold
each member, as img2dataset and video2dataset write), and the shard directory gets a ``_SUCCESS.json``
with totals. A tar's name comes from the keys it holds
(``shard_name_for``), so a retried write lands on the same name; readers find tars by ``*.tar`` and
the index beside each. Roots written before this scheme hold numbered tars (``00012.tar``); both
forms are valid shard names. This module has no heavy imports so
that both ``stages.shard`` and ``model.data`` can use it.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

NUM_FRAMES = 8
SAMPLE_RATE = 16_000
DEPTH_MAX_MM = 10_000  # VIDAL clips depth at 10 m and stores millimetres

# Per-frame keys: modality -> (prefix, extension). Frame i of a modality is f"{prefix}.{i}.{ext}".
FRAME_KEYS: dict[str, tuple[str, str]] = {
    "rgb": ("rgb", "jpg"),
    "depth": ("depth", "png"),
    "ir": ("ir", "jpg"),
}
AUDIO_KEY = "flac"
VIDEO_KEY = "mp4"
JSON_KEY = "json"
TXT_KEY = "txt"

# The JSON fields, named as in the released VIDAL-10M metadata.
TEXT_FIELDS = ("raw", "mplug", "polish_mplug", "sound_mplug", "asr")
LIST_TEXT_FIELDS = ("ofa",)
JSON_FIELDS = (
    "video_id",
    "url",
    "title",
    "hashtags",
    "raw",
    "ofa",
    "mplug",
    "polish_mplug",
    "sound_mplug",
    "asr",
    "duration",
    "fps",
    "width",
    "height",
    "license",
    "depth_kind",
    "parent_id",  # with the clip stage: the video a clip was cut from, and the clip's span in it (s)
    "start",
    "end",
    "score_raw",  # with the score stage: cosine of the clip with each text field (null without it)
    "score_mplug",
    "score_polish_mplug",
    "score_ofa",
    "models",
)
# ``txt``: the configured field, then these in order (the most polished caption first, the title last).
TXT_FALLBACK = ("polish_mplug", "mplug", "raw", "title")
TXT_FIELDS = (*TEXT_FIELDS, *LIST_TEXT_FIELDS, "title")  # the fields shard.txt_field may name
STATS_SUFFIX = "_stats.json"
MODEL_COLUMN_SUFFIX = "_model"  # a model stage writes f"{stage}_model" per row; the JSON's models map

SHARD_NAME_DIGITS = 5
SHARD_NAME_PATTERN = rf"\d{{{SHARD_NAME_DIGITS}}}|shard-[0-9a-f]{{16}}"  # numbered (older roots) or by keys
_VIDEO_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def frame_key(modality: str, index: int) -> str:
    """The tar member suffix of frame ``index`` of ``modality`` (``rgb``, ``depth`` or ``ir``)."""
    prefix, ext = FRAME_KEYS[modality]
    return f"{prefix}.{index}.{ext}"


def shard_name(index: int) -> str:
    """``00012`` for shard 12: the numbered form of older roots and of hand-made shard sets."""
    return f"{index:0{SHARD_NAME_DIGITS}d}"


def shard_name_for(keys: list[str]) -> str:
    """``shard-<16 hex>``: the name of a tar holding exactly ``keys`` (in any order); tars are
    ``{name}.tar`` and their indexes ``{name}.parquet``."""
    digest = hashlib.sha1("\n".join(sorted(keys)).encode()).hexdigest()
    return f"shard-{digest[:16]}"


def stats_name(name: str) -> str:
    """``shard-<hex>_stats.json``: the per-shard stats file beside ``{name}.tar``."""
    return f"{name}{STATS_SUFFIX}"


def sample_text(meta: dict[str, Any], field: str | None = None) -> str | None:
    """The caption of a sample's ``txt`` member: ``field``, else the first non-empty of
    ``TXT_FALLBACK``; a list field (``ofa``) gives its first caption. None when it has no text."""
    for name in (field, *TXT_FALLBACK) if field else TXT_FALLBACK:
        value = meta.get(name)
        if isinstance(value, list):
            value = next((v for v in value if isinstance(v, str) and v.strip()), None)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def is_valid_video_id(video_id: str) -> bool:
    """True for ids made only of ``[A-Za-z0-9_-]``, at most 64 characters (safe as a key and a file name)."""
    return bool(_VIDEO_ID.match(video_id))


def raw_text(row: dict[str, Any]) -> str | None:
    """VIDAL's ``raw``: the released one when imported, else the title followed by its hashtags."""
    if row.get("raw"):
        return row["raw"]
    tags = " ".join(f"#{t}" for t in row.get("hashtags") or [])
    text = " ".join(x for x in (row.get("title") or "", tags) if x).strip()
    return text or None


def encode_json(meta: dict[str, Any]) -> bytes:
    """Encode a sample's JSON with exactly ``JSON_FIELDS`` (missing ones as null)."""
    return json.dumps({k: meta.get(k) for k in JSON_FIELDS}, ensure_ascii=False).encode("utf-8")


def frames_of(sample: dict[str, Any], modality: str) -> list[bytes]:
    """The encoded frames of one modality in a raw (undecoded) WebDataset sample, in frame order."""
    prefix, ext = FRAME_KEYS[modality]
    out = []
    for i in range(NUM_FRAMES):
        data = sample.get(f"{prefix}.{i}.{ext}")
        if data is None:
            break
        out.append(data)
    return out
