"""Video-text retrieval readers: MSR-VTT, MSVD, DiDeMo, ActivityNet Captions.

Each reader accepts the benchmark folder in two shapes, detected from its index files:
``languagebind`` (the CLIP4Clip/HBI layout that LanguageBind's TRAIN_AND_VALIDATE.md documents for
its downloads, e.g. ``MSRVTT_JSFUSION_test.csv`` + ``MSRVTT_Videos/``) and ``public`` (the files of
the dataset's own release). docs/benchmarks.md lists the files and where to get them.

Protocols (as LanguageBind's ``vl_ret`` loaders): MSR-VTT 1k-A is 1000 videos with one caption each
(the JSFUSION csv); MSVD's test split is 670 videos with all their captions (multi-caption);
DiDeMo and ActivityNet are paragraph retrieval (all of a video's sentences joined into one caption).
"""

from __future__ import annotations

import csv
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from model.benchmarks.layout import (
    VIDEO_EXTS,
    LayoutError,
    RetrievalSet,
    first_existing,
    media_for,
    media_index,
    read_lines,
)


def _bases(root: Path, *subdirs: str) -> list[Path]:
    """The folder itself and the named sub-folders it may wrap (``root/MSRVTT``, ...)."""
    return [root] + [root / s for s in subdirs if (root / s).is_dir()]


def _find(bases: list[Path], names: tuple[str, ...]) -> Path | None:
    for base in bases:
        for n in names:
            if (base / n).is_file():
                return base / n
    return None


def _videos(bases: list[Path], folders: tuple[str, ...]) -> tuple[dict[str, Path], str]:
    dirs = [b / f for b in bases for f in folders if (b / f).is_dir()]
    if not dirs:
        wanted = ", ".join(f"{bases[0]}/{f}" for f in folders)
        raise LayoutError(f"no video folder found: looked for {wanted}")
    return media_index(dirs, VIDEO_EXTS), ", ".join(str(d) for d in dirs)


def _build(
    ids: list[str],
    captions: dict[str, list[str]],
    index: dict[str, Path],
    where: str,
    layout: str,
    split: str,
    skip_missing: bool,
    notes: list[str] | None = None,
) -> RetrievalSet:
    found = media_for(ids, index, where, "video", skip_missing)
    kept = [i for i in ids if i in found]
    items, texts, owner = [], [], []
    for i in kept:
        for c in captions[i]:
            texts.append(c)
            owner.append(len(items))
        items.append(found[i])
    notes = list(notes or [])
    if len(kept) < len(ids):
        notes.append(f"skipped {len(ids) - len(kept)} videos missing on disk")
    return RetrievalSet(items, texts, owner, layout, split, notes)


# -- MSR-VTT -----------------------------------------------------------------------------------
MSRVTT_VIDEO_DIRS = ("MSRVTT_Videos", "videos/all", "videos", "TestVideo", "TrainValVideo", "test_videos")


def read_msrvtt(root: Path, skip_missing: bool = False) -> RetrievalSet:
    """1k-A (JSFUSION csv: ``key,vid_key,video_id,sentence``), or the full test split (2990 videos,
    20 captions each) from the official ``test_videodatainfo.json`` when no JSFUSION csv is there."""
    bases = _bases(root, "MSRVTT", "msrvtt_data", "annotation")
    csv_path = _find(bases, ("MSRVTT_JSFUSION_test.csv",))
    info = _find(bases, ("test_videodatainfo.json",))
    if csv_path is None and info is None:
        raise LayoutError(
            f"MSR-VTT index not found in {root}: looked for MSRVTT_JSFUSION_test.csv "
            "(1k-A split, from CLIP4Clip's msrvtt_data) and test_videodatainfo.json "
            "(the official test annotations)"
        )
    index, where = _videos(_bases(root, "MSRVTT"), MSRVTT_VIDEO_DIRS)
    if csv_path is not None:
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"video_id", "sentence"} <= set(rows[0]):
            raise LayoutError(f"{csv_path} lacks the JSFUSION columns video_id,sentence")
        captions = {r["video_id"]: [r["sentence"].strip()] for r in rows}
        layout = "languagebind" if (csv_path.parent / "MSRVTT_Videos").is_dir() else "public"
        return _build(list(captions), captions, index, where, layout, "test-1k-A", skip_missing)
    data = json.loads(info.read_text())
    ids = [v["video_id"] for v in data["videos"] if v.get("split", "test") == "test"]
    captions: dict[str, list[str]] = {i: [] for i in ids}
    for s in data["sentences"]:
        if s["video_id"] in captions:
            captions[s["video_id"]].append(s["caption"].strip())
    ids = [i for i in ids if captions[i]]
    return _build(
        ids,
        captions,
        index,
        where,
        "public",
        "test-full",
        skip_missing,
        ["full test split (no JSFUSION csv): not the paper's 1k-A figures"],
    )


# -- MSVD --------------------------------------------------------------------------------------
class _PlainUnpickler(pickle.Unpickler):
    """raw-captions.pkl holds only dicts, lists and strings: refuse anything else (no code runs)."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"raw-captions.pkl refers to {module}.{name}; expected plain data")


def read_msvd(root: Path, skip_missing: bool = False) -> RetrievalSet:
    """Test split (``test_list.txt``, 670 videos) with every caption: ``raw-captions.pkl`` (token
    lists, CLIP4Clip's) or the public ``AllVideoDescriptions.txt`` (``<video id> <caption>`` lines)."""
    bases = _bases(root, "MSVD", "msvd_data")
    split_list = _find(bases, ("test_list.txt",))
    if split_list is None:
        raise LayoutError(f"MSVD split list not found: {root}/test_list.txt (from CLIP4Clip's msvd_data)")
    ids = read_lines(split_list)
    pkl = _find(bases, ("raw-captions.pkl",))
    captions: dict[str, list[str]] = {}
    if pkl is not None:
        with open(pkl, "rb") as f:
            raw = _PlainUnpickler(f).load()
        captions = {k: [" ".join(c) if isinstance(c, list) else str(c) for c in v] for k, v in raw.items()}
        layout = "languagebind"
    else:
        desc = _find(bases, ("AllVideoDescriptions.txt",))
        if desc is None:
            raise LayoutError(
                f"MSVD captions not found in {root}: looked for raw-captions.pkl and AllVideoDescriptions.txt"
            )
        for line in desc.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip() or line.startswith("#") or " " not in line.strip():
                continue
            vid, text = line.strip().split(" ", 1)
            captions.setdefault(vid, []).append(text.strip())
        layout = "public"
    absent = [i for i in ids if not captions.get(i)]
    if absent:
        raise LayoutError(
            f"{len(absent)} test videos have no caption (e.g. {absent[0]}): "
            "the caption file does not match test_list.txt"
        )
    index, where = _videos(bases, ("MSVD_Videos", "YouTubeClips", "videos"))
    return _build(ids, captions, index, where, layout, "test", skip_missing)


# -- DiDeMo ------------------------------------------------------------------------------------
DIDEMO_SECONDS = 31.0  # LanguageBind's loader reads seconds 0..31: the 30 s annotation window (+1)


@dataclass(frozen=True)
class VideoWindow:
    """The first ``seconds`` of a video; ``load(num_frames)`` decodes that many frames uniformly
    spread over them (the preprocessing then takes all of them, in either mode)."""

    path: Path
    seconds: float

    def load(self, num_frames: int = 8) -> list[np.ndarray]:
        with av.open(str(self.path)) as container:
            times = [f.time for f in container.decode(video=0)]
        inside = [i for i, t in enumerate(times) if t is None or t <= self.seconds] or [0]
        wanted = {int(inside[int(round(k))]) for k in np.linspace(0, len(inside) - 1, num_frames)}
        picked: dict[int, np.ndarray] = {}
        with av.open(str(self.path)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index in wanted:
                    picked[index] = frame.to_ndarray(format="rgb24")
                if index >= max(wanted):
                    break
        order = [int(inside[int(round(k))]) for k in np.linspace(0, len(inside) - 1, num_frames)]
        return [picked[i] for i in order]


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def read_didemo(root: Path, skip_missing: bool = False) -> RetrievalSet:
    """Test split, paragraph retrieval: ``test_data.json`` (LocalizingMoments' annotations), the
    videos listed in ``test_list.txt`` when present (CLIP4Clip's), else every video in the json."""
    bases = _bases(root, "Didemo", "DiDeMo", "data")
    ann = _find(bases, ("test_data.json",))
    if ann is None:
        raise LayoutError(f"DiDeMo annotations not found: {root}/test_data.json (LocalizingMoments' data/)")
    paragraphs: dict[str, list[str]] = {}
    for row in json.loads(ann.read_text()):
        paragraphs.setdefault(row["video"], []).append(row["description"].strip())
    split_list = _find(bases, ("test_list.txt",))
    ids = [i for i in read_lines(split_list) if i in paragraphs] if split_list else list(paragraphs)
    index, where = _videos(bases, ("videos", "video", "DiDeMo_Videos"))
    by_name = {**{_stem(k): v for k, v in index.items()}, **index}  # "x.mov" ids, "x.mov.mp4" files
    lookup = {i: by_name.get(i) or by_name.get(_stem(i)) for i in ids}
    captions = {i: [" ".join(paragraphs[i])] for i in ids}
    found = {i: VideoWindow(p, DIDEMO_SECONDS) for i, p in lookup.items() if p}
    return _build(
        ids,
        captions,
        found,
        where,
        "languagebind" if split_list else "public",
        "test",
        skip_missing,
        [f"frames from the first {DIDEMO_SECONDS:.0f} s of each video, as LanguageBind's loader"],
    )


# -- ActivityNet Captions ----------------------------------------------------------------------
def read_activitynet(root: Path, skip_missing: bool = False) -> RetrievalSet:
    """``val_1`` split, paragraph retrieval: ``val_1.json`` (``{"v_<id>": {"sentences": [...]}}``),
    restricted to ``val_ids.json`` when present (CLIP4Clip's); videos ``v_<id>.*`` or ``<id>.*``."""
    bases = _bases(root, "ActivityNet", "captions")
    ann = first_existing(
        root,
        ("val_1.json", "ActivityNet/val_1.json", "captions/val_1.json"),
        "ActivityNet Captions annotations",
        "the ActivityNet Captions release's captions/val_1.json",
    )
    data = json.loads(ann.read_text())
    id_file = _find(bases, ("val_ids.json",))
    ids = [i for i in json.loads(id_file.read_text()) if i in data] if id_file else list(data)
    index, where = _videos(bases + _bases(root / "Videos"), ("Activity_Videos", "Videos", "videos"))
    lookup = {i: index.get(i) or index.get(i[2:] if i.startswith("v_") else f"v_{i}") for i in ids}
    captions = {i: [" ".join(s.strip() for s in data[i]["sentences"])] for i in ids}
    return _build(
        ids,
        captions,
        {i: p for i, p in lookup.items() if p},
        where,
        "languagebind" if id_file else "public",
        "val_1",
        skip_missing,
    )
