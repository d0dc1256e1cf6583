"""Benchmark readers on the tiny datasets of test_benchmarks_data.py: each layout detected, each
protocol's items and captions, and a missing file named."""

from __future__ import annotations

import numpy as np
import pytest

from model.benchmarks import registry
from model.benchmarks.layout import ClassificationSet, LayoutError, MultiLabelSet, RetrievalSet
from model.benchmarks.prompts import ESC50_CLASSES, FLIR_V1_CLASSES, NYU_CLASSES
from pipeline.synthetic import encode_video
from tests.test_benchmarks_data import (
    SENTENCES,
    build_activitynet,
    build_audiocaps,
    build_audioset,
    build_clotho,
    build_didemo,
    build_esc50,
    build_flir,
    build_flir_v2,
    build_imagenet,
    build_llvip,
    build_msrvtt,
    build_msrvtt_public,
    build_msvd,
    build_nyud,
    build_sund,
    write_depth_png,
)


def test_video_readers_follow_each_protocol(tmp_path):
    d = registry.get("MSR-VTT").read(build_msrvtt(tmp_path / "msrvtt"))
    assert isinstance(d, RetrievalSet) and (d.layout, d.split, len(d), len(d.captions)) == (
        "languagebind",
        "test-1k-A",
        4,
        4,
    )
    full = registry.get("msrvtt").read(build_msrvtt_public(tmp_path / "msrvtt_pub"))
    assert (full.split, len(full), len(full.captions), full.caption_item) == (
        "test-full",
        3,
        6,
        [0, 0, 1, 1, 2, 2],
    )
    for public in (False, True):
        m = registry.get("msvd").read(build_msvd(tmp_path / f"msvd{public}", public))
        assert (m.layout, len(m), len(m.captions)) == ("public" if public else "languagebind", 3, 6)
        assert m.captions[0] == SENTENCES[0] and m.items[0].suffix == ".avi"
        dd = registry.get("didemo").read(build_didemo(tmp_path / f"didemo{public}", public))
        assert (
            len(dd) == 2 and dd.captions[0] == f"{SENTENCES[0]} part 0 {SENTENCES[0]} part 1"
        )  # a paragraph
        a = registry.get("activitynet").read(build_activitynet(tmp_path / f"anet{public}", public))
        assert len(a) == 2 and a.captions[1] == f"{SENTENCES[1]}. It stops."


def test_didemo_reads_the_first_31_seconds(tmp_path):
    from model.benchmarks.video import VideoWindow

    frames = np.full((80, 24, 32, 3), 20, np.uint8)  # 40 s at 2 fps: dark up to 31 s, bright after
    frames[63:] = 230
    path = tmp_path / "long.mp4"
    encode_video(path, frames, 2)
    picked = VideoWindow(path, 31.0).load(8)
    assert len(picked) == 8 and max(float(f.mean()) for f in picked) < 60
    assert (
        len(VideoWindow(path, 100.0).load(8)) == 8
        and float(VideoWindow(path, 100.0).load(8)[-1].mean()) > 200
    )
    d = registry.get("didemo").read(build_didemo(tmp_path / "didemo"))
    assert isinstance(d.items[0], VideoWindow) and len(d.items[0].load(4)) == 4


def test_audio_readers_both_layouts(tmp_path):
    for public in (True, False):
        e = registry.get("ESC-50").read(build_esc50(tmp_path / f"esc{public}", public))
        assert isinstance(e, ClassificationSet) and e.folds is not None and sorted(e.folds) == [1, 2, 3, 4, 5]
        assert sorted(ESC50_CLASSES[k] for k in e.labels) == ["dog", "dog", "rain", "rain", "siren"]
        c = registry.get("clotho").read(build_clotho(tmp_path / f"clotho{public}", public))
        assert (len(c), len(c.captions), c.layout) == (3, 15, "public" if public else "languagebind")
        ac = registry.get("audiocaps").read(build_audiocaps(tmp_path / f"ac{public}", public))
        assert (len(ac), len(ac.captions), ac.caption_item) == (3, 6, [0, 0, 1, 1, 2, 2])
        s = registry.get("audioset").read(build_audioset(tmp_path / f"as{public}", public))
        assert isinstance(s, MultiLabelSet) and s.targets == [[0, 1], [2], [0]] and s.classes[2] == "Animal"


def test_depth_infrared_image_readers(tmp_path):
    n = registry.get("NYU-D").read(build_nyud(tmp_path / "nyu"))
    assert [NYU_CLASSES[k] for k in n.labels] == ["bedroom", "kitchen", "living room"]
    p = registry.get("nyud").read(build_nyud(tmp_path / "nyu_pub", public=True))
    assert p.layout == "public" and [NYU_CLASSES[k] for k in p.labels] == [
        "bedroom",
        "kitchen",
        "living room",
        "others",
    ]
    mm = p.items[0].load()
    assert mm.min() == 500 and mm.dtype == np.float32  # the 3-bit rotation undone: millimetres again
    s = registry.get("sun-d").read(build_sund(tmp_path / "sun"))
    assert len(s) == 4 and (s.layout, s.split) == ("public", "all")  # garage is not one of the 19 classes
    s = registry.get("sun-d").read(build_sund(tmp_path / "sun_split", split=True))
    assert s.split == "test" and [s.classes[k] for k in s.labels] == ["bathroom", "corridor", "study space"]
    write_depth_png(tmp_path / "sun_lb" / "data" / "val" / "computer_room" / "00001.png", 0)
    s = registry.get("sund").read(tmp_path / "sun_lb")
    assert s.layout == "languagebind" and s.classes[s.labels[0]] == "computer room"
    lv = registry.get("llvip").read(build_llvip(tmp_path / "llvip"))
    assert sorted(lv.labels) == [0, 1, 1]  # the "person" folder is the class "people"
    lp = registry.get("llvip").read(build_llvip(tmp_path / "llvip_pub", public=True))
    assert sorted(lp.labels) == [0, 0, 1, 1] and lp.items[0].load().shape == (80, 40, 3)
    f = registry.get("flir").read(build_flir(tmp_path / "flir_pub", public=True))
    assert [FLIR_V1_CLASSES[k] for k in f.labels] == ["car", "person"]
    im = registry.get("imagenet").read(build_imagenet(tmp_path / "imagenet"))
    assert im.classes == ["tench", "goldfish"] and im.labels == [0, 1]


def test_missing_files_are_named(tmp_path):
    root = build_msrvtt(tmp_path / "m")
    (root / "MSRVTT" / "MSRVTT_Videos" / "video7011.mp4").unlink()
    with pytest.raises(LayoutError, match="1 of 4 video files missing.*video7011"):
        registry.get("msrvtt").read(root)
    assert len(registry.get("msrvtt").read(root, skip_missing=True)) == 3
    with pytest.raises(LayoutError, match="MSRVTT_JSFUSION_test.csv"):
        registry.get("msrvtt").read(tmp_path / "m" / "MSRVTT" / "MSRVTT_Videos")
    with pytest.raises(LayoutError, match="test_list.txt"):
        registry.get("msvd").read(tmp_path)
    with pytest.raises(LayoutError, match="clotho_captions_evaluation.csv"):
        registry.get("clotho").read(tmp_path)
    esc = build_esc50(tmp_path / "esc")
    (esc / "audio" / "2-100033-A-36.wav").unlink()
    with pytest.raises(LayoutError, match="2-100033-A-36"):
        registry.get("esc50").read(esc)
    with pytest.raises(LayoutError, match="not a directory"):
        registry.get("nyud").read(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown benchmark"):
        registry.get("kinetics")


def test_flir_v2_folders_map_to_the_official_names(tmp_path):
    from model.benchmarks.prompts import FLIR_V2_CLASSES

    d = registry.get("flirv2").read(build_flir_v2(tmp_path / "flir2"))
    assert [FLIR_V2_CLASSES[k] for k in d.labels] == [
        "bike",
        "traffic light",
        "construction equipment or trailers",
        "semi truck or freight truck",
    ]
