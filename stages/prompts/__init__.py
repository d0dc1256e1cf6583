"""Versioned prompt files for the language stages, and the quoting of untrusted text inside prompts.

A prompt file is ``<name>.v<N>.txt`` in this folder (or any ``.txt`` path given in config). It has a
``[system]`` and a ``[user]`` section; lines starting with ``#`` are comments. The user section holds
``{data}`` exactly once: the only part of a request that varies between videos. ``{num_frames}`` is
also filled where present. Nothing else is substituted, so braces elsewhere are sent as written.

Untrusted text (titles, descriptions, hashtags, model captions, transcripts) reaches a prompt only
through ``data_block``: each field is length-capped and stripped of control characters, and the
whole is one JSON object between ``<video_data>`` tags in which ``<``, ``>`` and ``&`` are escaped,
so no title can close the block, open a new turn or pose as an instruction outside the data.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROMPT_DIR = Path(__file__).resolve().parent
DATA_OPEN, DATA_CLOSE = "<video_data>", "</video_data>"
_SECTION = re.compile(r"^\[(system|user)\]\s*$")
_NAME = re.compile(r"^[a-z0-9_]+\.v\d+$")


@dataclass(frozen=True)
class Prompt:
    """A loaded prompt: its recorded version, the system text and the user template."""

    version: str
    system: str
    user: str

    def render(self, data: str, num_frames: int | None = None) -> tuple[str, str]:
        """``(system, user)`` texts with the data block (and frame count) in place."""
        user = self.user
        if num_frames is not None:  # before the data goes in: the data is never scanned for placeholders
            user = user.replace("{num_frames}", str(num_frames))
        return self.system, user.replace("{data}", data)

    def instruction_words(self) -> list[str]:
        """The fixed words of the prompt (placeholders removed): what an echoing model would repeat."""
        text = f"{self.system} {self.user}".replace("{data}", " ").replace("{num_frames}", " ")
        return words(text)


def words(text: str) -> list[str]:
    """Lower-case word tokens (letters and digits), for overlap checks."""
    return re.findall(r"[a-z0-9]+", text.lower())


def parse_prompt(text: str, version: str) -> Prompt:
    """Parse a prompt file's text; ``ValueError`` names what is wrong."""
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = _SECTION.match(line)
        if m:
            current = m.group(1)
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
        elif line.strip():
            raise ValueError(f"prompt {version}: text before the first [system] / [user] section")
    user = "\n".join(sections.get("user", [])).strip()
    if user.count("{data}") != 1:
        raise ValueError(f"prompt {version}: the [user] section must contain {{data}} exactly once")
    return Prompt(version=version, system="\n".join(sections.get("system", [])).strip(), user=user)


def load_prompt(name: str) -> Prompt:
    """A prompt by repo name (``enhance.v1``) or by path to a ``.txt`` file.

    Repo prompts record their name as the version; a file from elsewhere records its stem and the
    first 8 hex digits of its SHA-256, so a changed file never passes for an earlier one.
    """
    if name.endswith(".txt"):
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"prompt file not found: {name}")
        text = path.read_text(encoding="utf-8")
        return parse_prompt(text, f"{path.stem}@{hashlib.sha256(text.encode()).hexdigest()[:8]}")
    if not _NAME.match(name):
        raise ValueError(
            f"prompt {name!r}: expected a repo prompt such as enhance.v1, or a path to a .txt file"
        )
    path = PROMPT_DIR / f"{name}.txt"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROMPT_DIR.glob("*.txt")))
        raise ValueError(f"prompt {name!r} not found; repo prompts: {known}")
    return parse_prompt(path.read_text(encoding="utf-8"), name)


def clean_text(value: Any, limit: int) -> str | None:
    """Untrusted text made safe to quote: control characters removed, whitespace collapsed, capped."""
    if value is None or limit <= 0:
        return None
    text = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in str(value))
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text or None


def data_block(fields: dict[str, Any]) -> str:
    """Fields (already capped) as one JSON object between ``<video_data>`` tags; empty fields dropped."""
    kept = {k: v for k, v in fields.items() if v not in (None, "", [], {})}
    body = json.dumps(kept, ensure_ascii=False, indent=1)
    # Escaped so the text can never contain a tag: the block's end is always the real one.
    body = body.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f"{DATA_OPEN}\n{body}\n{DATA_CLOSE}"
