"""The released VIDAL-10M metadata, read as a stream.

The file is one JSON object keyed by YouTube id (10,076,613 entries in the release), each value
holding ``folder``, ``raw`` (title with hashtags), ``mplug``, ``polish_mplug``, ``ofa`` (8 frame
captions) and ``sound_mplug``. ``json.load`` would hold all of it at once (tens of GB as Python
objects), so ``iter_object_items`` walks the top-level object with ``json.JSONDecoder.raw_decode``
over a sliding text buffer: memory stays at one buffer plus one entry, whatever the file's size.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from typing import Any, BinaryIO

from contracts import store
from contracts.video_ids import YOUTUBE_ID, sha1_id, youtube_url
from stages.sources.text_rules import hashtags_in, strip_hashtags

CHUNK_BYTES = 1 << 20
WHITESPACE = " \t\n\r"


class StreamingJSONError(ValueError):
    """The input is not a JSON object of entries; the message gives the character position."""


def iter_object_items(stream: BinaryIO, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[str, Any]]:
    """(key, value) pairs of a top-level JSON object read from a binary stream, one at a time."""
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8-sig")()
    buf, pos, consumed, eof = "", 0, 0, False

    def fill() -> bool:
        nonlocal buf, pos, consumed, eof
        if eof:
            return False
        data = stream.read(chunk_bytes)
        eof = not data
        consumed += pos
        buf = buf[pos:] + utf8.decode(data or b"", final=eof)
        pos = 0
        return True

    def skip_ws() -> str:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in WHITESPACE:
                pos += 1
            if pos < len(buf):
                return buf[pos]
            if not fill():
                return ""

    def decode_value() -> Any:
        nonlocal pos
        if buf[pos] not in '{["':
            # A number or literal has no closing bracket: make sure its end is in the buffer,
            # or "-1." would parse as -1 while "5e3" is still on its way.
            while not any(d in buf[pos:] for d in ",}] \t\r\n") and fill():
                pass
        while True:
            try:
                value, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as e:
                # The value may simply run past the buffer: read more, unless the file has ended.
                if not fill():
                    raise StreamingJSONError(
                        f"invalid JSON near character {consumed + e.pos}: {e.msg}"
                    ) from None
                continue
            pos = end
            return value

    def expect(chars: str) -> str:
        nonlocal pos
        ch = skip_ws()
        if not ch or ch not in chars:
            raise StreamingJSONError(
                f"expected {' or '.join(map(repr, chars))} at character "
                f"{consumed + pos}, found {ch or 'end of file'!r}"
            )
        pos += 1
        return ch

    expect("{")
    if skip_ws() == "}":
        return
    while True:
        if skip_ws() != '"':
            raise StreamingJSONError(f"expected a string key at character {consumed + pos}")
        key = decode_value()
        expect(":")
        skip_ws()
        yield key, decode_value()
        if expect(",}") == "}":
            return


def entry_row(key: str, value: Any) -> dict[str, Any]:
    """A candidate row for one VIDAL-10M entry, carrying the released captions."""
    if not isinstance(value, dict):
        return {
            "video_id": sha1_id("vidal10m", str(key)),
            "source": "vidal10m",
            "row_error": f"VIDAL-10M entry {str(key)[:40]!r} is not an object",
        }
    if not YOUTUBE_ID.match(str(key)):
        return {
            "video_id": sha1_id("vidal10m", str(key)),
            "source": "vidal10m",
            "row_error": f"VIDAL-10M key {str(key)[:40]!r} is not a YouTube id",
        }
    raw = value.get("raw")
    raw = str(raw) if raw is not None else None
    ofa = value.get("ofa")
    return {
        "video_id": f"youtube-{key}",
        "url": youtube_url(key),
        "title": strip_hashtags(raw) if raw else None,
        "hashtags": hashtags_in(raw),
        "raw": raw,
        "mplug": _text(value.get("mplug")),
        "polish_mplug": _text(value.get("polish_mplug")),
        "sound_mplug": _text(value.get("sound_mplug")),
        "ofa": [str(c).strip() for c in ofa] if isinstance(ofa, list) else None,
        "folder": _text(value.get("folder")),
        "source": "vidal10m",
    }


def _text(v: Any) -> str | None:
    return str(v).strip() if v is not None else None


def read_vidal10m(
    uri: str, batch_size: int = 2048, limit: int | None = None
) -> Iterator[list[dict[str, Any]]]:
    """Candidate rows of a VIDAL-10M JSON file (``.gz``/``.bz2``/``.zst`` too), in batches."""
    fs, path = store.resolve(uri)
    batch: list[dict[str, Any]] = []
    n = 0
    with fs.open_input_stream(path, compression="detect") as f:
        try:
            for key, value in iter_object_items(f):
                if limit is not None and n >= limit:
                    break
                batch.append(entry_row(key, value))
                n += 1
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
        except (StreamingJSONError, UnicodeDecodeError) as e:
            # A damaged file: the entries before the damage are kept, and the damage is a failed row
            # (one object cannot be resynchronised safely, so the entries after it are not read).
            why = str(e) if isinstance(e, StreamingJSONError) else f"invalid UTF-8 ({e.reason})"
            batch.append(
                {
                    "video_id": sha1_id("vidal10m", f"{uri}|{why}"),
                    "source": "vidal10m",
                    "row_error": f"{uri}: {why}; the {n} entries before it were read, the rest "
                    f"of the file was not",
                }
            )
    if batch:
        yield batch
