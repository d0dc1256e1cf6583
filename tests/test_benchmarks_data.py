"""Tiny benchmark datasets in each release's exact layout, written by the tests: real encoded videos,
WAV files, PNG/JPEG images, and CSV/JSON/TSV/XML/pickle/MAT index files in the published formats.
Shared by the reader tests (test_benchmarks_readers.py) and the end-to-end CLI tests."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from model.benchmarks.prompts import FLIR_V1_CLASSES
from pipeline.synthetic import CONCEPTS, encode_video, render_frames

SENTENCES = [
    "a red circle moving left",
    "a blue square moving up",
    "a green triangle moving down",
    "a red square moving right",
]


def _video(path: Path, k: int, codec: str = "libx264") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    encode_video(path, render_frames(CONCEPTS[k], n_frames=12, size=(64, 48), seed=k), 12, codec=codec)
    return path


def _wav(path: Path, k: int, seconds: float = 1.0, rate: int = 16000) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * (220 + 110 * k) * t)).astype(np.float32), rate)
    return path


def write_depth_png(path: Path, k: int, sun: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mm = (np.linspace(500, 4000 + 500 * k, 48 * 64).reshape(48, 64)).astype(np.uint16)
    if sun:  # SUN RGB-D stores depth rotated left by 3 bits
        mm = ((mm << 3) | (mm >> 13)).astype(np.uint16)
    Image.fromarray(mm).save(path)
    return path


def _jpg(path: Path, k: int, size: tuple[int, int] = (64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(k)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)
    return path


# -- video -----------------------------------------------------------------------------------------
def build_msrvtt(root: Path, n: int = 4) -> Path:
    """LanguageBind's layout: MSRVTT/MSRVTT_JSFUSION_test.csv + MSRVTT/MSRVTT_Videos/{video_id}.mp4."""
    d = root / "MSRVTT"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "MSRVTT_JSFUSION_test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "vid_key", "video_id", "sentence"])
        for i in range(n):
            w.writerow([f"ret{i}", f"msr{7010 + i}", f"video{7010 + i}", SENTENCES[i % 4]])
    for i in range(n):
        _video(d / "MSRVTT_Videos" / f"video{7010 + i}.mp4", i)
    return root


def build_msrvtt_public(root: Path) -> Path:
    """The official release: test_videodatainfo.json + TestVideo/videoNNNN.mp4 (full test split)."""
    videos = [{"video_id": f"video{7010 + i}", "split": "test", "category": 1} for i in range(3)]
    sentences = [
        {"video_id": f"video{7010 + i}", "caption": f"{SENTENCES[i]} {j}", "sen_id": 3 * i + j}
        for i in range(3)
        for j in range(2)
    ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "test_videodatainfo.json").write_text(json.dumps({"videos": videos, "sentences": sentences}))
    for i in range(3):
        _video(root / "TestVideo" / f"video{7010 + i}.mp4", i)
    return root


def build_msvd(root: Path, public: bool = False) -> Path:
    """raw-captions.pkl (token lists) + test_list.txt + MSVD_Videos/*.avi, or the public
    AllVideoDescriptions.txt + YouTubeClips/."""
    ids = ["-4wsuPCjDBc_5_15", "0lh_UWF9ZP4_62_69", "1dfR0A_BXjw_590_600"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "test_list.txt").write_text("\n".join(ids) + "\n")
    caps = {v: [SENTENCES[i].split(), f"{SENTENCES[i]} again".split()] for i, v in enumerate(ids)}
    if public:
        lines = ["# Microsoft Research Video Description Corpus", "#"]
        lines += [f"{v} {' '.join(c)}" for v in ids for c in caps[v]]
        (root / "AllVideoDescriptions.txt").write_text("\n".join(lines) + "\n")
    else:
        (root / "raw-captions.pkl").write_bytes(pickle.dumps(caps))
    folder = "YouTubeClips" if public else "MSVD_Videos"
    for i, v in enumerate(ids):
        _video(root / folder / f"{v}.avi", i, codec="mpeg4")
    return root


def build_didemo(root: Path, public: bool = False) -> Path:
    """LocalizingMoments' test_data.json (+ CLIP4Clip's test_list.txt) and videos/."""
    vids = ["10015567@N08_3655084291_d8b58466fa.mov", "10034316@N04_5374082049_2e3c37da74.mp4"]
    rows = [
        {"video": v, "description": f"{SENTENCES[i]} part {j}", "times": [[0, 1]], "annotation_id": 2 * i + j}
        for i, v in enumerate(vids)
        for j in range(2)
    ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "test_data.json").write_text(json.dumps(rows))
    if not public:
        (root / "test_list.txt").write_text("\n".join(vids) + "\n")
    for i, v in enumerate(vids):
        _video(root / "videos" / f"{v}.mp4" if v.endswith(".mov") else root / "videos" / v, i)
    return root


def build_activitynet(root: Path, public: bool = False) -> Path:
    """val_1.json ({"v_<id>": {duration, timestamps, sentences}}) + videos v_<id>.mp4."""
    ids = ["v_QOlSCBRmfWY", "v_ehGHCYKzyZ8"]
    ann = {
        v: {"duration": 2.0, "timestamps": [[0, 1], [1, 2]], "sentences": [f" {SENTENCES[i]}.", " It stops."]}
        for i, v in enumerate(ids)
    }
    base = root / "captions" if public else root
    base.mkdir(parents=True, exist_ok=True)
    (base / "val_1.json").write_text(json.dumps(ann))
    if not public:
        (root / "val_ids.json").write_text(json.dumps(ids))
    folder = root / "videos" if public else root / "Videos" / "Activity_Videos"
    for i, v in enumerate(ids):
        _video(folder / f"{v}.mp4", i)
    return root


# -- audio -----------------------------------------------------------------------------------------
ESC_PICK = [("dog", 1, 18), ("rain", 2, 36), ("siren", 3, 40), ("dog", 4, 18), ("rain", 5, 36)]


def build_esc50(root: Path, public: bool = True) -> Path:
    """ESC-50-master: meta/esc50.csv + audio/{fold}-{id}-{take}-{target}.wav, or test/<class>/*.wav."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (cat, fold, target) in enumerate(ESC_PICK):
        name = f"{fold}-{100032 + k}-A-{target}.wav"
        rows.append(
            {
                "filename": name,
                "fold": fold,
                "target": target,
                "category": cat,
                "esc10": "True",
                "src_file": 100032 + k,
                "take": "A",
            }
        )
        _wav(root / "audio" / name if public else root / "test" / cat / name, k)
    if public:
        (root / "meta").mkdir(exist_ok=True)
        with open(root / "meta" / "esc50.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return root


def build_clotho(root: Path, public: bool = True) -> Path:
    """clotho_captions_evaluation.csv (file_name, caption_1..caption_5) + evaluation/*.wav."""
    base = root if public else root / "CLOTHO_retrieval_dataset"
    base.mkdir(parents=True, exist_ok=True)
    names = ["Birds in the forest.wav", "Rain_on_roof 2.wav", "Train passing.wav"]
    with open(base / "clotho_captions_evaluation.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name"] + [f"caption_{i}" for i in range(1, 6)])
        for k, n in enumerate(names):
            w.writerow([n] + [f"{SENTENCES[k]} sound {j}" for j in range(5)])
    for k, n in enumerate(names):
        _wav(root / "evaluation" / n, k, rate=44100)
    return root


def build_audiocaps(root: Path, public: bool = True) -> Path:
    """The release's test.csv (audiocap_id,youtube_id,start_time,caption) + audio/Y<ytid>.wav, or
    the reformatted audiocaps_test.tsv."""
    root.mkdir(parents=True, exist_ok=True)
    clips = [("--0w1YA1Hm4", 30), ("-AheI8Epim4", 0), ("0BvXuQu7uK0", 10)]
    if public:
        with open(root / "test.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["audiocap_id", "youtube_id", "start_time", "caption"])
            for k, (y, s) in enumerate(clips):
                for j in range(2):
                    w.writerow([1000 + 2 * k + j, y, s, f"{SENTENCES[k]} {j}"])
        for k, (y, _) in enumerate(clips):
            _wav(root / "audio" / "test" / f"Y{y}.wav", k)
    else:
        with open(root / "audiocaps_test.tsv", "w", newline="") as f:
            w = csv.writer(f, delimiter="\t")
            w.writerow(["uniq_id", "audio", "text"])
            for k, (y, _) in enumerate(clips):
                for j in range(2):
                    w.writerow([2 * k + j, f"audiocaps/audio/test/{y}.wav", f"{SENTENCES[k]} {j}"])
        for k, (y, _) in enumerate(clips):
            _wav(root / "audio" / "test" / f"{y}.wav", k)
    return root


AUDIOSET_LABELS = [
    ("0", "/m/09x0r", "Speech"),
    ("1", "/m/05zppz", "Male speech, man speaking"),
    ("2", "/m/0jbk", "Animal"),
]


def build_audioset(root: Path, public: bool = True) -> Path:
    """class_labels_indices.csv + eval_segments.csv (the release) or filter_eval.json, and Y<id>.wav."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "class_labels_indices.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "mid", "display_name"])
        w.writerows(AUDIOSET_LABELS)
    segs = [
        ("--4gqARaEJE", "0.000", "/m/09x0r,/m/05zppz"),
        ("--BfvyPmVMo", "20.000", "/m/0jbk"),
        ("--U7joUcTCo", "0.000", "/m/09x0r"),
    ]
    if public:
        lines = [
            "# Segments csv created Sun Mar  5 10:54:25 2017",
            "# num_ytids=3, num_segs=3",
            "# YTID, start_seconds, end_seconds, positive_labels",
        ]
        lines += [f'{y}, {s}, {float(s) + 10:.3f}, "{labels}"' for y, s, labels in segs]
        (root / "eval_segments.csv").write_text("\n".join(lines) + "\n")
    else:
        data = [{"wav": f"Y{y}.wav", "labels": labels} for y, _, labels in segs]
        (root / "filter_eval.json").write_text(json.dumps({"data": data}))
    for k, (y, _, _) in enumerate(segs):
        _wav(root / "eval_segments" / f"Y{y}.wav", k)
    return root


# -- depth, infrared, image --------------------------------------------------------------------------
def build_nyud(root: Path, public: bool = False) -> Path:
    """nyuv2/data/val/<class>/*.png (LanguageBind's), or SUN RGB-D's kv1/NYUdata/<scene>/."""
    classes = ["bedroom", "kitchen", "living_room"]
    for k, c in enumerate(classes):
        if public:
            scene = root / "SUNRGBD" / "kv1" / "NYUdata" / f"NYU{k + 1:04d}"
            scene.mkdir(parents=True, exist_ok=True)
            (scene / "scene.txt").write_text(c)
            write_depth_png(scene / "depth_bfx" / f"NYU{k + 1:04d}.png", k, sun=True)
        else:
            write_depth_png(root / "data" / "val" / c / f"{k:05d}.png", k)
    if public:  # a scene outside the first nine NYU classes counts as "others"
        scene = root / "SUNRGBD" / "kv1" / "NYUdata" / "NYU0009"
        scene.mkdir(parents=True)
        (scene / "scene.txt").write_text("basement")
        write_depth_png(scene / "depth_bfx" / "NYU0009.png", 4, sun=True)
    return root


def build_sund(root: Path, split: bool = False) -> Path:
    """SUN RGB-D scene folders (scene.txt + depth_bfx/); an unlisted scene class is left out. With
    ``split``, the toolbox's allsplit.mat puts the first three in the test split."""
    keys = []
    for k, c in enumerate(["bathroom", "corridor", "study_space", "garage", "office"]):
        scene = root / "SUNRGBD" / "kv2" / "align_kv2" / f"2014-12-1{k}_15-01-5{k}_260595134347"
        scene.mkdir(parents=True, exist_ok=True)
        (scene / "scene.txt").write_text(c)
        write_depth_png(scene / "depth_bfx" / "0000103.png", k, sun=True)
        keys.append(f"/n/fs/sun3d/data/SUNRGBD/kv2/align_kv2/{scene.name}")
    if split:
        from scipy.io import savemat

        tt = root / "SUNRGBDtoolbox" / "traintestSUNRGBD"
        tt.mkdir(parents=True)
        savemat(
            tt / "allsplit.mat",
            {"alltest": np.array(keys[:3], dtype=object), "alltrain": np.array(keys[3:], dtype=object)},
        )
    return root


def build_llvip(root: Path, public: bool = False) -> Path:
    """llvip/val/{background,person}/*.jpg, or the release's infrared/test + VOC Annotations."""
    if not public:
        for k, c in enumerate(["background", "person", "person"]):
            _jpg(root / "val" / c / f"19000{k}.jpg", k)
        return root
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for k in range(2):
        _jpg(root / "infrared" / "test" / f"19000{k}.jpg", k, size=(160, 128))
        box = (10 + 20 * k, 20, 50 + 20 * k, 100)
        (root / "Annotations" / f"19000{k}.xml").write_text(
            f"<annotation><filename>19000{k}.jpg</filename><size><width>160</width><height>128</height>"
            f"<depth>3</depth></size><object><name>person</name><bndbox><xmin>{box[0]}</xmin>"
            f"<ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object></annotation>"
        )
    return root


def build_flir(root: Path, public: bool = False) -> Path:
    """flirv1/val/<class>/*.jpg, or FLIR_ADAS_1_3's val/thermal_annotations.json (COCO) + thermal_8_bit/."""
    if not public:
        for k, c in enumerate(FLIR_V1_CLASSES):
            _jpg(root / "val" / c / f"FLIR_0886{k}.jpeg", k)
        return root
    images = [
        {"id": k, "file_name": f"thermal_8_bit/FLIR_0886{k}.jpeg", "width": 160, "height": 128}
        for k in range(2)
    ]
    anns = [
        {"id": 1, "image_id": 0, "category_id": 3, "bbox": [10, 10, 60, 40]},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [30, 20, 24, 80]},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4]},
    ]  # too small: dropped
    cats = [
        {"id": 1, "name": "person"},
        {"id": 2, "name": "bicycle"},
        {"id": 3, "name": "car"},
        {"id": 18, "name": "dog"},
    ]
    (root / "val").mkdir(parents=True, exist_ok=True)
    (root / "val" / "thermal_annotations.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    for k in range(2):
        _jpg(root / "val" / "thermal_8_bit" / f"FLIR_0886{k}.jpeg", k, size=(160, 128))
    return root


def build_imagenet(root: Path) -> Path:
    """val/<wnid>/*.JPEG + LOC_synset_mapping.txt."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n"
    )
    for k, w in enumerate(["n01440764", "n01443537"]):
        _jpg(root / "val" / w / f"ILSVRC2012_val_0000000{k}.JPEG", k)
    return root


def build_flir_v2(root: Path) -> Path:
    """flirv2/val/<folder>/*.jpg with the reformatted download's folder names (light, other vehicle...)."""
    for k, c in enumerate(["bike", "light", "other vehicle", "truck"]):
        _jpg(root / "val" / c / f"video-{k:05d}.jpg", k)
    return root
