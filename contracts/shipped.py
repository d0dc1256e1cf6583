"""Files the project ships beside its code: ``configs/`` and ``manifests/``, found from anywhere.

In a source checkout (and an editable install) they are the repository's own folders. A wheel carries
copies as package data under ``vidal/shipped/`` (``setup.py``'s build step), since a non-editable
install has no repository to look in. A relative path is looked up in the working directory first,
so a user's own ``configs/x.yaml`` wins over the shipped one of the same name.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent.parent  # the checkout, or site-packages after an install
SHIPPED_ROOTS = (_HERE, _HERE / "vidal" / "shipped")
# ``--config NAME``: where a bare name is looked for, per kind of config
CONFIG_DIRS = {"pipeline": "configs", "train": "configs/train", "model": "configs/model"}


def resolve(path: str | Path) -> Path:
    """``path`` itself when absolute or present; else the shipped file of that relative path (e.g.
    ``manifests/stopwords.txt``, ``configs/model/tiny.yaml``); else ``path`` unchanged, so that the
    caller's not-found error names what the user wrote."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    for root in SHIPPED_ROOTS:
        if (root / p).exists():
            return root / p
    return p


def config_path(name_or_path: str | Path, kind: str = "pipeline") -> Path:
    """A config file from a path, or from a shipped config's name: ``demo`` -> ``configs/demo.yaml``
    for the pipeline, ``configs/train/demo.yaml`` for training."""
    p = Path(name_or_path)
    if p.is_file() or p.is_absolute() or p.suffix in (".yaml", ".yml", ".json") or len(p.parts) > 1:
        return resolve(p)
    return resolve(Path(CONFIG_DIRS[kind]) / f"{p}.yaml")


def shipped_configs(kind: str = "pipeline") -> list[str]:
    """The names ``config_path`` accepts for ``kind`` (for help and error messages)."""
    for root in SHIPPED_ROOTS:
        d = root / CONFIG_DIRS[kind]
        if d.is_dir():
            return sorted(f.stem for f in d.glob("*.yaml"))
    return []
