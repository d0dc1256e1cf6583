"""Depth, infrared and image classification readers: NYU-D, SUN-D, LLVIP, FLIR v1/v2, ImageNet folders.

Layouts, detected from the folder:

- ``languagebind``: the ImageNet-style folders of LanguageBind's reformatted downloads
  (``nyuv2/data/val/<class>/*.png``, ``llvip/val/<class>/*.jpg``, ``flirv1/val/<class>/*``).
- ``public``: SUN RGB-D's release for NYU-D and SUN-D (``<scene dir>/scene.txt`` + ``depth_bfx/`` or
  ``depth/``; NYU-D is its ``NYUdata`` part, as ImageBind evaluates it); LLVIP's release
  (``infrared/test/*.jpg`` + VOC ``Annotations/*.xml``) and FLIR's (COCO json + thermal images), both
  turned into object crops (see ``Crop``): our reconstruction of the reformatted sets, documented in
  docs/benchmarks.md; the reformatted downloads are the ones to use for paper-comparable figures.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.benchmarks.layout import (
    IMAGE_EXTS,
    ClassificationSet,
    LayoutError,
    class_folders,
    first_existing,
    read_class_folders,
    read_lines,
)
from model.benchmarks.prompts import FOLDER_ALIASES, NYU_CLASSES, SUN_CLASSES, normalise_name

MIN_CROP = 16  # object boxes under 16 px on a side carry no class evidence at the towers' 224 px input


@dataclass(frozen=True)
class Crop:
    """A box ``(left, top, right, bottom)`` of an image, decoded in a loader worker."""

    path: Path
    box: tuple[int, int, int, int]

    def load(self) -> np.ndarray:
        from PIL import Image

        with Image.open(self.path) as im:
            return np.asarray(im.convert("RGB").crop(self.box))


@dataclass(frozen=True)
class SunDepth:
    """A SUN RGB-D depth PNG: uint16 with the toolbox's 3-bit rotation; ``load`` gives millimetres."""

    path: Path

    def load(self) -> np.ndarray:
        from PIL import Image

        with Image.open(self.path) as im:
            raw = np.asarray(im, dtype=np.uint16)
        return ((raw >> 3) | (raw << 13)).astype(np.float32)


def _folder_layout(root: Path, candidates: tuple[str, ...]) -> Path | None:
    for c in candidates:
        p = root / c
        if p.is_dir() and class_folders(p):
            return p
    return None


# -- depth ---------------------------------------------------------------------------------------
def _sun_scenes(root: Path, only: str | None) -> list[tuple[Path, str]]:
    out = []
    for scene_file in sorted(root.rglob("scene.txt")):
        if only and only not in scene_file.parts:
            continue
        d = scene_file.parent
        depth_dir = next((d / n for n in ("depth_bfx", "depth") if (d / n).is_dir()), None)
        pngs = sorted(depth_dir.glob("*.png")) if depth_dir else []
        if not pngs:
            raise LayoutError(f"{d} has scene.txt but no depth_bfx/*.png or depth/*.png")
        out.append((pngs[0], normalise_name(scene_file.read_text().strip())))
    return out


def _read_depth(
    root: Path, name: str, classes: tuple[str, ...], folders: tuple[str, ...], only: str | None
) -> ClassificationSet:
    folder = _folder_layout(root, folders)
    if folder is not None:
        return read_class_folders(folder, classes, IMAGE_EXTS, "languagebind", "val")
    scenes = _sun_scenes(root, only)
    if not scenes:
        raise LayoutError(
            f"{name} not found in {root}: looked for {', '.join(folders)} (class folders) and "
            f"SUN RGB-D scene folders (scene.txt + depth_bfx/){' under NYUdata' if only else ''}"
        )
    split = root / "test_list.txt"
    mat = next((root / m for m in SUN_SPLIT_FILES if (root / m).is_file()), None)
    if split.is_file():  # relative scene folders, one a line
        keep = {str((root / s).resolve()) for s in read_lines(split)}
        scenes = [(p, s) for p, s in scenes if str(p.parent.parent.resolve()) in keep]
    elif mat is not None:  # the SUN RGB-D toolbox's official split
        test = _sun_test_split(mat)
        scenes = [(p, s) for p, s in scenes if _sun_key(p.parent.parent, root) in test]
    index = {c: k for k, c in enumerate(classes)}
    items, labels = [], []
    for png, scene in scenes:
        label = index.get(scene, index.get("others"))
        if label is not None:
            items.append(SunDepth(png))
            labels.append(label)
    has_split = split.is_file() or mat is not None
    notes = (
        []
        if has_split
        else ["no split file (allsplit.mat or test_list.txt): every scene folder is evaluated"]
    )
    return ClassificationSet(
        items, labels, list(classes), "public", "test" if has_split else "all", notes=notes
    )


SUN_SPLIT_FILES = (
    "allsplit.mat",
    "SUNRGBDtoolbox/traintestSUNRGBD/allsplit.mat",
    "traintestSUNRGBD/allsplit.mat",
)


def _sun_key(scene: Path, root: Path) -> str:
    """``kv1/NYUdata/NYU0001``: a scene folder's path below its ``SUNRGBD`` folder (or below root)."""
    parts = scene.parts
    if "SUNRGBD" in parts:
        return "/".join(parts[len(parts) - parts[::-1].index("SUNRGBD") :])
    return scene.relative_to(root).as_posix()


def _sun_test_split(mat: Path) -> set[str]:
    """The ``alltest`` scene folders of the toolbox's ``allsplit.mat`` (absolute Princeton paths)."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise LayoutError(
            f"reading {mat} needs scipy (pip install scipy), or give test_list.txt instead"
        ) from None
    paths = loadmat(str(mat), squeeze_me=True)["alltest"]
    return {str(p).rstrip("/").split("SUNRGBD/", 1)[-1] for p in paths}


def read_nyud(root: Path, skip_missing: bool = False) -> ClassificationSet:
    """NYU-D scene classification, 10 classes (scenes outside the first 9 are "others")."""
    return _read_depth(root, "NYU-D", NYU_CLASSES, ("data/val", "val", "nyuv2/data/val"), "NYUdata")


def read_sund(root: Path, skip_missing: bool = False) -> ClassificationSet:
    """SUN-D scene classification, the 19 scene classes LanguageBind uses (other scenes left out)."""
    return _read_depth(root, "SUN-D", SUN_CLASSES, ("data/val", "val", "sunrgbd/data/val"), None)


# -- infrared ------------------------------------------------------------------------------------
def _free_box(
    w: int, h: int, size: tuple[int, int], taken: list[tuple[int, int, int, int]]
) -> tuple[int, int, int, int] | None:
    """The first ``size`` box on a half-size grid that overlaps none of ``taken`` (deterministic)."""
    bw, bh = size
    for top in range(0, h - bh + 1, max(1, bh // 2)):
        for left in range(0, w - bw + 1, max(1, bw // 2)):
            b = (left, top, left + bw, top + bh)
            if all(b[2] <= t[0] or b[0] >= t[2] or b[3] <= t[1] or b[1] >= t[3] for t in taken):
                return b
    return None


def read_llvip(root: Path, skip_missing: bool = False) -> ClassificationSet:
    """LLVIP: ``background`` vs ``people`` (class folders), or from the release: every annotated
    person in ``infrared/test`` cropped, and one person-free crop of the same size per person."""
    folder = _folder_layout(root, ("val", "llvip/val"))
    if folder is not None:
        return read_class_folders(
            folder, ("background", "people"), IMAGE_EXTS, "languagebind", "val", FOLDER_ALIASES["llvip"]
        )
    images = first_existing(
        root,
        ("infrared/test", "LLVIP/infrared/test"),
        "LLVIP infrared test images",
        "the LLVIP release (infrared/test + Annotations)",
    )
    ann_dir = first_existing(root, ("Annotations", "LLVIP/Annotations"), "LLVIP annotations")
    items: list[Crop] = []
    labels: list[int] = []
    for img in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_EXTS):
        xml = ann_dir / f"{img.stem}.xml"
        if not xml.is_file():
            raise LayoutError(f"annotation not found for {img.name}: {xml}")
        tree = ET.parse(xml).getroot()
        w, h = int(tree.findtext("size/width")), int(tree.findtext("size/height"))
        boxes = []
        for obj in tree.iter("object"):
            if obj.findtext("name", "").strip().lower() != "person":
                continue
            bb = obj.find("bndbox")
            boxes.append(tuple(int(float(bb.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")))
        for b in boxes:
            if b[2] - b[0] < MIN_CROP or b[3] - b[1] < MIN_CROP:
                continue
            items.append(Crop(img, b))
            labels.append(1)
            free = _free_box(w, h, (b[2] - b[0], b[3] - b[1]), boxes)
            if free is not None:
                items.append(Crop(img, free))
                labels.append(0)
    if not items:
        raise LayoutError(f"no person boxes of at least {MIN_CROP} px in {ann_dir}")
    return ClassificationSet(
        items,
        labels,
        ["background", "people"],
        "public",
        "test",
        notes=["crops reconstructed from the release's boxes (docs/benchmarks.md)"],
    )


def _read_flir(
    root: Path, key: str, classes: tuple[str, ...], folders: tuple[str, ...], coco: tuple[str, ...]
) -> ClassificationSet:
    folder = _folder_layout(root, folders)
    if folder is not None and not any((root / c).is_file() for c in coco):  # FLIR's own val/ has a json
        return read_class_folders(folder, classes, IMAGE_EXTS, "languagebind", "val", FOLDER_ALIASES.get(key))
    ann = first_existing(
        root,
        coco,
        f"FLIR {key[-2:]} annotations",
        "class folders val/<class>/ or the FLIR release's COCO json",
    )
    data = json.loads(ann.read_text())
    alias = {normalise_name(a): normalise_name(c) for a, c in FOLDER_ALIASES.get(key, {}).items()}
    index = {normalise_name(c): k for k, c in enumerate(classes)}
    cat = {}
    for c in data["categories"]:
        name = normalise_name(c["name"])
        if alias.get(name, name) in index:
            cat[c["id"]] = index[alias.get(name, name)]
    files = {im["id"]: im["file_name"] for im in data["images"]}
    items, labels = [], []
    for a in data["annotations"]:
        if a["category_id"] not in cat:
            continue
        x, y, w, h = (int(round(v)) for v in a["bbox"])
        if w < MIN_CROP or h < MIN_CROP:
            continue
        path = ann.parent / files[a["image_id"]]
        if not path.is_file():
            path = ann.parent / "data" / Path(files[a["image_id"]]).name
        if not path.is_file():
            raise LayoutError(
                f"image of annotation {a.get('id')} not found: {ann.parent / files[a['image_id']]}"
            )
        items.append(Crop(path, (x, y, x + w, y + h)))
        labels.append(cat[a["category_id"]])
    return ClassificationSet(
        items,
        labels,
        list(classes),
        "public",
        "val",
        notes=["crops of the release's boxes (docs/benchmarks.md)"],
    )


def read_flir_v1(root: Path, skip_missing: bool = False) -> ClassificationSet:
    """FLIR ADAS v1: bicycle, car, dog, person."""
    from model.benchmarks.prompts import FLIR_V1_CLASSES

    return _read_flir(
        root,
        "flir_v1",
        FLIR_V1_CLASSES,
        ("val", "flirv1/val"),
        ("val/thermal_annotations.json", "FLIR_ADAS_1_3/val/thermal_annotations.json"),
    )


def read_flir_v2(root: Path, skip_missing: bool = False) -> ClassificationSet:
    """FLIR ADAS v2: 12 classes (LanguageBind's names)."""
    from model.benchmarks.prompts import FLIR_V2_CLASSES

    return _read_flir(
        root,
        "flir_v2",
        FLIR_V2_CLASSES,
        ("val", "flirv2/val"),
        ("images_thermal_val/coco.json", "FLIR_ADAS_v2/images_thermal_val/coco.json"),
    )


# -- image ----------------------------------------------------------------------------------------
def read_image_folder(root: Path, skip_missing: bool = False) -> ClassificationSet:
    """ImageNet-style ``val/<class>/*`` (or ``<root>/<class>/*``): class names from
    ``LOC_synset_mapping.txt`` (``<wnid> <name>, <synonym>...``), ``classnames.txt`` (one per line,
    in sorted folder order), or the folder names."""
    folder = _folder_layout(root, ("val", "ILSVRC2012_img_val", ".")) or root
    subs = class_folders(folder)
    if not subs:
        raise LayoutError(f"no class folders in {folder} (expected val/<class>/*.JPEG)")
    names = [s.name for s in subs]
    mapping = next(
        (p for p in (root / "LOC_synset_mapping.txt", folder / "LOC_synset_mapping.txt") if p.is_file()), None
    )
    if mapping is not None:
        wnid = {
            line.split(" ", 1)[0]: line.split(" ", 1)[1].split(",")[0].strip() for line in read_lines(mapping)
        }
        missing = [n for n in names if n not in wnid]
        if missing:
            raise LayoutError(f"{mapping} has no name for class folder {missing[0]}")
        classes = [wnid[n] for n in names]
    elif (root / "classnames.txt").is_file():
        classes = read_lines(root / "classnames.txt")
        if len(classes) != len(names):
            raise LayoutError(
                f"{root / 'classnames.txt'} has {len(classes)} names for {len(names)} class folders"
            )
    else:
        classes = [normalise_name(n) for n in names]
    items, labels = [], []
    for label, sub in enumerate(subs):  # by position: ImageNet has two "crane" classes
        files = sorted(p for p in sub.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        items += files
        labels += [label] * len(files)
    if not items:
        raise LayoutError(f"no image files in the class folders of {folder}")
    return ClassificationSet(items, labels, classes, "imagenet-folder", "val")
