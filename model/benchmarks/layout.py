"""The three shapes a benchmark reader returns, and the file lookups every reader shares.

A reader turns a benchmark folder into one of these, reading only its index files (CSV, JSON, split
lists); media are decoded later, in the runner's loader workers. Every missing piece raises
``LayoutError`` naming the file (or the choices that were looked for), so an incomplete download
fails before any model time is spent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".3gp")
AUDIO_EXTS = (".wav", ".flac", ".mp3", ".ogg", ".m4a")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class LayoutError(FileNotFoundError):
    """A benchmark folder lacks a file its layout needs (the message names it and what to do)."""


@dataclass
class RetrievalSet:
    """Items (media sources) and captions; ``caption_item[j]`` is the item caption ``j`` describes.

    Several captions may describe one item (MSVD, Clotho, AudioCaps); every item has at least one.
    """

    items: list[Any]
    captions: list[str]
    caption_item: list[int]
    layout: str
    split: str
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.caption_item):
            raise ValueError("captions and caption_item differ in length")
        described = set(self.caption_item)
        if len(described) != len(self.items):
            raise ValueError(f"{len(self.items) - len(described)} items have no caption")

    def __len__(self) -> int:
        return len(self.items)

    def head(self, n: int) -> RetrievalSet:
        """The first ``n`` items with their captions (for quick runs)."""
        keep = [j for j, i in enumerate(self.caption_item) if i < n]
        return RetrievalSet(
            self.items[:n],
            [self.captions[j] for j in keep],
            [self.caption_item[j] for j in keep],
            self.layout,
            self.split,
            self.notes,
        )


@dataclass
class ClassificationSet:
    """Items with one class each; ``folds[i]`` (optional) is item ``i``'s fold (ESC-50)."""

    items: list[Any]
    labels: list[int]
    classes: list[str]
    layout: str
    split: str
    folds: list[int] | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def head(self, n: int) -> ClassificationSet:
        folds = self.folds[:n] if self.folds else None
        return ClassificationSet(
            self.items[:n], self.labels[:n], self.classes, self.layout, self.split, folds, self.notes
        )


@dataclass
class MultiLabelSet:
    """Items with any number of classes (AudioSet); ``targets[i]`` lists item ``i``'s class indices."""

    items: list[Any]
    targets: list[list[int]]
    classes: list[str]
    layout: str
    split: str
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def head(self, n: int) -> MultiLabelSet:
        return MultiLabelSet(
            self.items[:n], self.targets[:n], self.classes, self.layout, self.split, self.notes
        )


def require(path: Path, what: str, hint: str = "") -> Path:
    """``path`` if it exists, else ``LayoutError`` naming it (``hint``: where to get it)."""
    if not path.exists():
        raise LayoutError(f"{what} not found: {path}" + (f" ({hint})" if hint else ""))
    return path


def first_existing(root: Path, candidates: Sequence[str], what: str, hint: str = "") -> Path:
    """The first of ``root / c`` that exists, else ``LayoutError`` listing every candidate."""
    for c in candidates:
        if (root / c).exists():
            return root / c
    tried = ", ".join(str(root / c) for c in candidates)
    raise LayoutError(f"{what} not found in {root}: looked for {tried}" + (f" ({hint})" if hint else ""))


def media_index(folders: Iterable[Path], exts: Sequence[str]) -> dict[str, Path]:
    """``{file stem: path}`` of every media file under ``folders`` (recursively); the first wins."""
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for p in sorted(folder.rglob("*")):
            if p.suffix.lower() in exts and p.is_file():
                found.setdefault(p.stem, p)
    return found


def media_for(
    ids: Iterable[str], index: dict[str, Path], where: str, what: str = "video", skip_missing: bool = False
) -> dict[str, Path]:
    """``{id: media file}``; a missing file is ``LayoutError`` naming the first ones (and how many),
    or, with ``skip_missing``, left out (the record then says how many were skipped)."""
    ids = list(ids)
    missing = [i for i in ids if i not in index]
    if missing and not skip_missing:
        shown = ", ".join(missing[:3])
        raise LayoutError(
            f"{len(missing)} of {len(ids)} {what} files missing under {where} "
            f"(e.g. {shown}); download them, or pass --skip-missing to evaluate without them"
        )
    return {i: index[i] for i in ids if i in index}


def class_folders(folder: Path) -> list[Path]:
    """The class sub-folders of an ImageNet-style folder, sorted by name (torchvision's order)."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of a split list."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_class_folders(
    folder: Path,
    classes: Sequence[str],
    exts: Sequence[str],
    layout: str,
    split: str,
    aliases: dict[str, str] | None = None,
) -> ClassificationSet:
    """An ImageNet-style folder (``<folder>/<class>/<file>``) -> items labelled by the benchmark's
    class list; folder names are matched to class names by ``normalise_name`` and ``aliases``.

    A folder that matches no class is a ``LayoutError`` (a wrong root, or a class set that differs
    from the paper's); classes without a folder are allowed (a partial download) and reported.
    """
    from model.benchmarks.prompts import normalise_name

    require(folder, "class folder root")
    wanted = {normalise_name(c): k for k, c in enumerate(classes)}
    alias = {normalise_name(a): normalise_name(c) for a, c in (aliases or {}).items()}
    items: list[Any] = []
    labels: list[int] = []
    seen: set[int] = set()
    for sub in class_folders(folder):
        name = normalise_name(sub.name)
        label = wanted.get(alias.get(name, name))
        if label is None:
            raise LayoutError(
                f"class folder {sub} matches none of the {len(classes)} classes "
                f"({', '.join(classes[:5])}, ...); is {folder} the right root?"
            )
        files = sorted(p for p in sub.rglob("*") if p.suffix.lower() in exts and p.is_file())
        items += files
        labels += [label] * len(files)
        seen.add(label)
    if not items:
        raise LayoutError(f"no {'/'.join(exts)} files in class folders under {folder}")
    notes = []
    if len(seen) < len(classes):
        notes.append(
            f"{len(classes) - len(seen)} of the {len(classes)} classes have no folder (they still compete "
            "as candidates)"
        )
    return ClassificationSet(items, labels, list(classes), layout, split, notes=notes)
