"""Audio readers: ESC-50 (classification, 5 folds), Clotho and AudioCaps (retrieval), AudioSet (mAP).

Two layouts each, detected from the index files: ``public`` (the dataset's release: ESC-50's
``meta/esc50.csv`` + ``audio/``; Clotho's ``clotho_captions_evaluation.csv`` + ``evaluation/``;
AudioCaps' ``test.csv``; AudioSet's ``eval_segments.csv``) and ``languagebind`` (the reformatted
downloads of TRAIN_AND_VALIDATE.md: ``esc50/test/<class>/*.wav``, ``CLOTHO_retrieval_dataset/``,
``audiocaps_test.tsv``, ``filter_eval.json``). docs/benchmarks.md lists where to get them.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from model.benchmarks.layout import (
    AUDIO_EXTS,
    ClassificationSet,
    LayoutError,
    MultiLabelSet,
    RetrievalSet,
    first_existing,
    media_for,
    media_index,
    read_class_folders,
)
from model.benchmarks.prompts import ESC50_CLASSES, normalise_name

ESC50_NAME = re.compile(r"^(\d)-\d+-[A-Z]-\d+$")  # {fold}-{freesound id}-{take}-{target}.wav


def read_esc50(root: Path, skip_missing: bool = False) -> ClassificationSet:
    """All 2000 clips with their folds (from ``meta/esc50.csv``, or from the file names, which start
    with the fold, in the class-folder layout)."""
    meta = next(
        (
            p
            for p in (root / "meta" / "esc50.csv", root / "ESC-50-master" / "meta" / "esc50.csv")
            if p.is_file()
        ),
        None,
    )
    if meta is None:
        folder = first_existing(
            root,
            ("test", "esc50/test"),
            "ESC-50 audio",
            "meta/esc50.csv + audio/ (the ESC-50 release) or test/<class>/*.wav",
        )
        data = read_class_folders(folder, ESC50_CLASSES, AUDIO_EXTS, "languagebind", "all")
        names = [ESC50_NAME.match(Path(p).stem) for p in data.items]
        if all(names):
            data.folds = [int(m.group(1)) for m in names]
        else:
            data.notes.append("file names carry no fold: fold figures left out")
        return data
    with open(meta, newline="") as f:
        rows = list(csv.DictReader(f))
    index = {i: p for i, p in media_index([meta.parent.parent / "audio"], AUDIO_EXTS).items()}
    found = media_for(
        [Path(r["filename"]).stem for r in rows],
        index,
        str(meta.parent.parent / "audio"),
        "audio",
        skip_missing,
    )
    wanted = {c: k for k, c in enumerate(ESC50_CLASSES)}
    rows = [r for r in rows if Path(r["filename"]).stem in found]
    labels = []
    for r in rows:
        name = normalise_name(r["category"])
        if name not in wanted:
            raise LayoutError(f"{meta}: category {r['category']!r} is not an ESC-50 class")
        labels.append(wanted[name])
    return ClassificationSet(
        [found[Path(r["filename"]).stem] for r in rows],
        labels,
        list(ESC50_CLASSES),
        "public",
        "all",
        folds=[int(r["fold"]) for r in rows],
    )


def read_clotho(root: Path, skip_missing: bool = False) -> RetrievalSet:
    """Clotho's evaluation split: 5 captions per clip (``file_name,caption_1..caption_5``)."""
    csv_path = first_existing(
        root,
        ("clotho_captions_evaluation.csv", "CLOTHO_retrieval_dataset/clotho_captions_evaluation.csv"),
        "Clotho captions",
        "clotho_captions_evaluation.csv from Clotho v2.1 on Zenodo",
    )
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "file_name" not in rows[0]:
        raise LayoutError(f"{csv_path} lacks the file_name column")
    audio_dir = first_existing(
        root,
        ("evaluation", "clotho_audio_evaluation/evaluation", "audio/evaluation"),
        "Clotho evaluation audio",
        "clotho_audio_evaluation.7z, extracted",
    )
    index = {p.name: p for p in audio_dir.rglob("*") if p.suffix.lower() in AUDIO_EXTS}
    names = [r["file_name"] for r in rows]
    found = media_for(names, index, str(audio_dir), "audio", skip_missing)
    items, texts, owner = [], [], []
    for r in rows:
        if r["file_name"] not in found:
            continue
        caps = [r[k].strip() for k in sorted(r) if k.startswith("caption") and r[k] and r[k].strip()]
        texts += caps
        owner += [len(items)] * len(caps)
        items.append(found[r["file_name"]])
    layout = "languagebind" if csv_path.parent.name == "CLOTHO_retrieval_dataset" else "public"
    return RetrievalSet(items, texts, owner, layout, "evaluation", _skipped(len(rows), len(items)))


def read_audiocaps(root: Path, skip_missing: bool = False) -> RetrievalSet:
    """AudioCaps' test split, every caption of a clip (5 each): the release's ``test.csv``
    (``audiocap_id,youtube_id,start_time,caption``, audio found as ``<ytid>``, ``Y<ytid>`` or
    ``<ytid>_<start>``), or the reformatted ``audiocaps_test.tsv`` (an audio path and a caption)."""
    index = media_index([root], AUDIO_EXTS)
    pairs: list[tuple[str, list[str], str]] = []  # (clip id, candidate stems, caption)
    tsv = next(
        (p for p in (root / "audiocaps_test.tsv", root / "audiocaps" / "audiocaps_test.tsv") if p.is_file()),
        None,
    )
    if tsv is not None:
        with open(tsv, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        header, body = rows[0], rows[1:]
        path_col = (
            next((k for k, v in enumerate(body[0]) if v.lower().endswith(AUDIO_EXTS)), None) if body else None
        )
        if path_col is None:
            raise LayoutError(f"{tsv}: no column holds audio file names")
        text_col = next(
            (k for k, h in enumerate(header) if h.lower() in ("caption", "text")), len(header) - 1
        )
        pairs = [(r[path_col], [Path(r[path_col]).stem], r[text_col].strip()) for r in body]
        layout = "languagebind"
    else:
        csv_path = first_existing(
            root,
            ("test.csv", "dataset/test.csv", "audiocaps/dataset/test.csv"),
            "AudioCaps test captions",
            "test.csv from the AudioCaps repository",
        )
        with open(csv_path, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                y, start = r["youtube_id"], int(float(r["start_time"]))
                pairs.append((y, [y, f"Y{y}", f"{y}_{start}", f"Y{y}_{start}"], r["caption"].strip()))
        layout = "public"
    stems = {}
    for clip, candidates, _ in pairs:
        stems.setdefault(clip, next((c for c in candidates if c in index), candidates[0]))
    found = media_for(list(dict.fromkeys(stems.values())), index, str(root), "audio", skip_missing)
    order: dict[str, int] = {}
    items, texts, owner = [], [], []
    for clip, _, caption in pairs:
        stem = stems[clip]
        if stem not in found:
            continue
        if stem not in order:
            order[stem] = len(items)
            items.append(found[stem])
        texts.append(caption)
        owner.append(order[stem])
    return RetrievalSet(items, texts, owner, layout, "test", _skipped(len(stems), len(items)))


def read_audioset(root: Path, skip_missing: bool = False) -> MultiLabelSet:
    """AudioSet's evaluation segments with their labels (527 classes, ``class_labels_indices.csv``):
    the release's ``eval_segments.csv`` or the reformatted ``filter_eval.json``."""
    labels_csv = first_existing(
        root,
        ("class_labels_indices.csv", "metadata/class_labels_indices.csv"),
        "AudioSet class list",
        "class_labels_indices.csv from the AudioSet release",
    )
    with open(labels_csv, newline="", encoding="utf-8") as f:
        label_rows = list(csv.DictReader(f))
    mid_index = {r["mid"]: int(r["index"]) for r in label_rows}
    classes = [r["display_name"] for r in sorted(label_rows, key=lambda r: int(r["index"]))]
    index = media_index([root], AUDIO_EXTS)
    entries: list[tuple[list[str], list[str]]] = []  # (candidate stems, mids)
    listing = root / "filter_eval.json"
    if listing.is_file():
        for d in json.loads(listing.read_text())["data"]:
            entries.append(([Path(d["wav"]).stem], d["labels"].split(",")))
        layout = "languagebind"
    else:
        seg = first_existing(
            root,
            ("eval_segments.csv", "metadata/eval_segments.csv"),
            "AudioSet segment list",
            "eval_segments.csv from the AudioSet release",
        )
        for line in seg.read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            ytid, start, _, mids = next(csv.reader([line], skipinitialspace=True))
            s = int(float(start))
            entries.append(([f"Y{ytid}", ytid, f"{ytid}_{s}", f"Y{ytid}_{s}"], mids.split(",")))
        layout = "public"
    stems = [next((c for c in cands if c in index), cands[0]) for cands, _ in entries]
    found = media_for(stems, index, str(root), "audio", skip_missing)
    items, targets = [], []
    for stem, (_, mids) in zip(stems, entries):
        if stem in found:
            unknown = [m for m in mids if m not in mid_index]
            if unknown:
                raise LayoutError(f"label {unknown[0]} of {stem} is not in {labels_csv}")
            items.append(found[stem])
            targets.append([mid_index[m] for m in mids])
    return MultiLabelSet(items, targets, classes, layout, "eval", _skipped(len(entries), len(items)))


def _skipped(total: int, kept: int) -> list[str]:
    return [f"skipped {total - kept} clips missing on disk"] if kept < total else []
