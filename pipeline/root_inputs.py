"""The inputs a run root was built from, remembered in ``{root}/_inputs.json``.

Without it a rerun silently took whatever inputs the command line implied: under the demo config a
rerun of a user's root without ``--input`` added 288 synthetic clips to the user's dataset. Now the
root remembers its lists, VIDAL-10M files, search terms (and whether it holds the demo media): a
rerun without inputs resumes on the remembered ones, and a rerun that would add others stops with
exit 2 unless they are named with ``--add-input``. Old roots without the file are taken as fresh.
"""

from __future__ import annotations

from typing import Any

from contracts import store

FILE = "_inputs.json"
DEMO = "demo-media"


def describe(discover: Any, demo_dir: str | None = None) -> list[str]:
    """The discover inputs as stable strings: ``list:URI``, ``vidal10m:URI``, ``terms-file:…``, ``term:…``."""
    out = [f"list:{store.normalize(u)}" for u in discover.inputs]
    out += [f"vidal10m:{store.normalize(u)}" for u in discover.vidal10m]
    if discover.search_terms:
        out.append(f"terms-file:{discover.search_terms}")
    out += [f"term:{t}" for t in discover.terms]
    if demo_dir is not None:
        out.append(f"{DEMO}:{store.normalize(demo_dir)}")
    return out


def read(root: str) -> list[str] | None:
    """The remembered inputs of a root, or None for a fresh root (or one from before this file)."""
    uri = store.join(store.normalize(root), FILE)
    return list(store.read_json(uri)["inputs"]) if store.exists(uri) else None


def write(root: str, inputs: list[str]) -> None:
    """Remember these inputs (atomically: a killed run leaves the old file or the new one)."""
    store.write_json(store.join(store.normalize(root), FILE), {"inputs": inputs})


def apply(discover: Any, remembered: list[str]) -> bool:
    """Set the discover inputs from a root's memory; True when it holds the demo media."""
    discover.inputs = [s.split(":", 1)[1] for s in remembered if s.startswith("list:")]
    discover.vidal10m = [s.split(":", 1)[1] for s in remembered if s.startswith("vidal10m:")]
    files = [s.split(":", 1)[1] for s in remembered if s.startswith("terms-file:")]
    discover.search_terms = files[0] if files else None
    discover.terms = [s.split(":", 1)[1] for s in remembered if s.startswith("term:")]
    return any(s.startswith(f"{DEMO}:") for s in remembered)


def shown(entries: list[str]) -> str:
    """Entries in words for a one-line message."""
    words = ["the demo media" if e.startswith(f"{DEMO}:") else e.split(":", 1)[1] for e in entries]
    return ", ".join(words[:5]) + (f" and {len(words) - 5} more" if len(words) > 5 else "")
