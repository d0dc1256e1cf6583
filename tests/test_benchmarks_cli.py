"""``python -m model.eval --benchmark``: every benchmark end to end in a subprocess with a small model,
one run per family over a roots YAML; figures equal the model's own inference API on the same files;
user errors exit 2 with one line before the model is loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.benchmarks import registry
from model.benchmarks.metrics import retrieval_metrics
from model.benchmarks.prompts import ESC50_CLASSES
from model.eval import main
from tests import test_benchmarks_data as data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from model import LanguageBind

    torch.manual_seed(0)
    model = LanguageBind.tiny(("video", "audio", "depth", "infrared"))
    return model, model.save(tmp_path_factory.mktemp("bench_model") / "LanguageBind_Video_FT-tiny")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "model.eval", *args, "--no-progress", "--workers", "1", "--batch-size", "4"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
    )


def run_family(tmp_path: Path, checkpoint: Path, roots: dict[str, Path]) -> dict[str, dict]:
    cfg = tmp_path / "roots.yaml"
    cfg.write_text("roots:\n" + "".join(f"  {k}: {v}\n" for k, v in roots.items()))
    out = tmp_path / "results.json"
    proc = run_cli(
        "--checkpoint",
        str(checkpoint),
        "--benchmark",
        "all",
        "--benchmark-config",
        str(cfg),
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = {r["benchmark"]: r for r in json.loads(out.read_text())}
    assert list(records) == [registry.get(k).name for k in roots]
    for r in records.values():
        assert {"schema", "protocol_version", "model", "benchmark", "split", "metrics", "n", "layout"} <= set(
            r
        )
        assert r["benchmark"] in proc.stdout  # the table
    return records


def test_video_benchmarks_end_to_end(tmp_path, tiny):
    model, ckpt = tiny
    roots = {
        "msrvtt": data.build_msrvtt(tmp_path / "msrvtt"),
        "msvd": data.build_msvd(tmp_path / "msvd", True),
        "didemo": data.build_didemo(tmp_path / "didemo"),
        "activitynet": data.build_activitynet(tmp_path / "anet", True),
    }
    rec = run_family(tmp_path, ckpt, roots)
    assert [(rec[k]["layout"], rec[k]["n"], rec[k]["captions"]) for k in roots] == [
        ("languagebind", 4, 4),
        ("public", 3, 6),
        ("languagebind", 2, 2),
        ("public", 2, 2),
    ]
    # the checkpoint is named after the FT tower: its README figure is the one printed beside ours
    assert rec["msrvtt"]["paper"]["text_to_video.R@1"]["value"] == 42.7
    # the same figures from the model's own API on the same files (captions paired by video id)
    for name in ("msrvtt", "msvd"):
        d = registry.get(name).read(roots[name])
        emb = model.encode("video", d.items)
        sim = model.encode_text(d.captions) @ emb.T
        direct = retrieval_metrics(sim, d.caption_item, d.captions)
        for key in ("R@1", "R@5", "mean_rank", "median_rank"):
            assert rec[name]["metrics"]["text_to_video"][key] == pytest.approx(direct["text_to_item"][key])
            assert rec[name]["metrics"]["video_to_text"][key] == pytest.approx(direct["item_to_text"][key])
    msr = registry.get("msrvtt").read(roots["msrvtt"])
    assert [p.stem for p in msr.items] == [
        f"video{7010 + i}" for i in range(4)
    ] and msr.captions == data.SENTENCES


def test_audio_benchmarks_end_to_end(tmp_path, tiny):
    model, ckpt = tiny
    roots = {
        "esc50": data.build_esc50(tmp_path / "esc", public=False),
        "clotho": data.build_clotho(tmp_path / "clotho"),
        "audiocaps": data.build_audiocaps(tmp_path / "ac", public=False),
        "audioset": data.build_audioset(tmp_path / "as", public=False),
    }
    rec = run_family(tmp_path, ckpt, roots)
    esc = rec["esc50"]["metrics"]
    assert rec["esc50"]["n"] == 5 and esc["classes"] == 50 and esc["chance_top1"] == 2.0
    assert {f"fold{k}_top1" for k in range(1, 6)} <= set(esc)
    assert rec["esc50"]["paper"]["top1"]["value"] == 91.8
    assert rec["clotho"]["metrics"]["text_to_audio"]["queries"] == 15
    assert rec["audioset"]["metrics"]["classes_with_positives"] == 3
    # ESC-50 top-1 from the public API: zero-shot over the 50 classes with "a sound of {}."
    from model import zero_shot_classify

    d = registry.get("esc50").read(roots["esc50"])
    probs = zero_shot_classify(model, "audio", d.items, ESC50_CLASSES, ["a sound of {}."])
    top1 = 100 * float((probs.argmax(1) == torch.tensor(d.labels)).float().mean())
    assert esc["top1"] == pytest.approx(top1)


@pytest.mark.slow
def test_depth_and_infrared_benchmarks_end_to_end(tmp_path, tiny):
    _, ckpt = tiny
    roots = {
        "nyud": data.build_nyud(tmp_path / "nyu", public=True),
        "sund": data.build_sund(tmp_path / "sun"),
        "llvip": data.build_llvip(tmp_path / "llvip", public=True),
        "flir_v1": data.build_flir(tmp_path / "f1"),
        "flir_v2": data.build_flir_v2(tmp_path / "f2"),
    }
    rec = run_family(tmp_path, ckpt, roots)
    assert [rec[k]["n"] for k in roots] == [4, 4, 4, 4, 4]
    assert rec["nyud"]["metrics"]["classes"] == 10 and rec["sund"]["metrics"]["classes"] == 19
    assert rec["nyud"]["paper"]["top1"]["value"] == 65.1 and rec["llvip"]["paper"]["top1"]["value"] == 87.2
    assert rec["flir_v2"]["metrics"]["chance_top1"] == pytest.approx(100 / 12)


def test_image_benchmark_needs_an_image_tower(tmp_path, tiny, capsys):
    _, ckpt = tiny
    rc = main(
        [
            "--checkpoint",
            str(ckpt),
            "--benchmark",
            "imagenet",
            "--no-progress",
            "--benchmark-root",
            str(data.build_imagenet(tmp_path / "in")),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "needs a 'image' tower" in err and len(err.strip().splitlines()) == 1


def test_user_errors_exit_2_before_the_model_loads(tmp_path, tiny, capsys):
    root = data.build_msrvtt(tmp_path / "msrvtt", n=2)
    (root / "MSRVTT" / "MSRVTT_Videos" / "video7011.mp4").unlink()
    bogus = str(tmp_path / "no-such-checkpoint")  # never opened: the layout is checked first
    for args, message in [
        (["--benchmark", "msrvtt", "--benchmark-root", str(root)], "video7011"),
        (["--benchmark", "msrvtt", "--benchmark-root", str(tmp_path / "absent")], "not a directory"),
        (["--benchmark", "msrvtt"], "needs --benchmark-root"),
        (["--benchmark", "all"], "needs --benchmark-config"),
        (["--benchmark", "kinetics", "--benchmark-root", str(root)], "unknown benchmark"),
    ]:
        rc = main(["--checkpoint", bogus, *args])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    pattern = ["--checkpoint", bogus, "--benchmark", "all", "--benchmark-root"]
    assert main([*pattern, str(tmp_path / "none" / "{benchmark}")]) == 2
    assert "no benchmark folder exists" in capsys.readouterr().err
    assert main([*pattern, str(tmp_path / "{benchmark}")]) == 2  # finds msrvtt/, whose clip is missing
    assert "video7011" in capsys.readouterr().err
    assert main(["--benchmark", "list"]) == 0
    assert "msrvtt       MSR-VTT" in capsys.readouterr().out
    proc = run_cli(
        "--checkpoint", bogus, "--benchmark", "msrvtt", "--benchmark-root", str(root)
    )  # as a user runs it
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: 1 of 2 video files missing")
    # an unreadable clip fails its benchmark with one line naming it (exit 1: bad data, not a usage
    # error); the other benchmarks still run and are written
    (root / "MSRVTT" / "MSRVTT_Videos" / "video7011.mp4").write_bytes(b"not a video" * 100)
    cfg = tmp_path / "roots.yaml"
    cfg.write_text(f"roots:\n  msrvtt: {root}\n  llvip: {data.build_llvip(tmp_path / 'llvip')}\n")
    rc = main(
        [
            "--checkpoint",
            str(tiny[1]),
            "--benchmark",
            "all",
            "--benchmark-config",
            str(cfg),
            "--no-progress",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert (
        rc == 1
        and len(err) == 1
        and err[0].startswith("error: msrvtt: cannot read")
        and "video7011.mp4" in err[0]
    )
    assert [r["benchmark"] for r in json.loads((tmp_path / "r.json").read_text())] == ["llvip"]
