"""``python -m model.convert`` both ways, and round trips through the released layout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model import LanguageBind
from model.convert import main
from tests.languagebind_ckpt import load_reference, reference_vision, write_checkpoint
from tests.test_languagebind_load import TEXTS, modality_of, official_input, to_vidal

ROOT = Path(__file__).resolve().parents[1]


def _plain(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.endswith("position_ids")}


@pytest.mark.parametrize("variant", ["video", "video_v15", "audio", "depth", "thermal", "image"])
def test_official_to_vidal_to_official_keeps_keys_shapes_and_values(tmp_path, variant):
    source = write_checkpoint(tmp_path / "official", variant, seed=3, position_ids=True)
    assert main(["to-vidal", str(source), "--out", str(tmp_path / "vidal")]) == 0
    assert main(["to-official", str(tmp_path / "vidal"), "--out", str(tmp_path / "back")]) == 0
    before, config = load_reference(source)
    after, config_after = load_reference(tmp_path / "back")
    before = _plain(before)
    assert sorted(after) == sorted(before)
    for key, value in before.items():
        assert after[key].shape == value.shape, key
        assert torch.equal(after[key], value.float()), key
    assert config_after["model_type"] == config["model_type"]
    for field in (
        "hidden_size",
        "num_hidden_layers",
        "patch_size",
        "add_time_attn",
        "num_frames",
        "num_mel_bins",
        "target_length",
        "clip_type",
        "audio_mean",
        "max_depth",
    ):
        assert config_after["vision_config"].get(field) == config["vision_config"].get(field), field
    assert config_after["text_config"]["vocab_size"] == config["text_config"]["vocab_size"]
    back = tmp_path / "back"
    assert json.loads((back / "vocab.json").read_text()) == json.loads((source / "vocab.json").read_text())
    assert (back / "merges.txt").read_text() == (source / "merges.txt").read_text()


def test_a_fine_tuned_tower_exports_to_what_the_official_forward_reproduces(tmp_path):
    source = write_checkpoint(tmp_path / "official", "video", seed=5)
    model = LanguageBind.from_config(
        {"init_from": f"languagebind:{source}", "modalities": {"video": {"lora": {"r": 4, "alpha": 8}}}}
    )
    with torch.no_grad():  # stand-in for training: move the LoRA and the projection away from the release
        g = torch.Generator().manual_seed(0)
        for name, p in model.towers["video"].named_parameters():
            if "lora_B" in name or name == "projection.weight":
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    vidal_dir = model.save(tmp_path / "vidal")
    assert main(["to-official", str(vidal_dir), "--out", str(tmp_path / "official_out")]) == 0
    sd, config = load_reference(tmp_path / "official_out")
    x = official_input(config)
    expected = F.normalize(reference_vision(sd, config, x), dim=-1)
    assert (model.encode("video", to_vidal(x)) - expected).abs().max() < 1e-4
    assert not any("lora" in k for k in sd)
    again = LanguageBind.load(tmp_path / "official_out")  # vidal -> official -> vidal
    assert (again.encode("video", to_vidal(x)) - model.encode("video", to_vidal(x))).abs().max() < 1e-5
    assert (again.encode_text(TEXTS) - model.encode_text(TEXTS)).abs().max() < 1e-5
    assert again.logit_scale_of("video").item() == pytest.approx(model.logit_scale_of("video").item())


def test_to_vidal_binds_several_towers_into_one_model(tmp_path):
    video = write_checkpoint(tmp_path / "v", "video", seed=1)
    thermal = write_checkpoint(tmp_path / "t", "thermal", seed=2)
    assert main(["to-vidal", f"video={video}", str(thermal), "--out", str(tmp_path / "both")]) == 0
    model = LanguageBind.load(tmp_path / "both")
    assert model.modalities == ("video", "infrared")
    sd, config = load_reference(thermal)
    x = official_input(config)
    assert (
        model.encode("infrared", x) - F.normalize(reference_vision(sd, config, x), dim=-1)
    ).abs().max() < 1e-4
    assert modality_of("thermal") == "infrared"


def test_user_errors_exit_2_with_one_line(tmp_path):
    run = [sys.executable, "-m", "model.convert"]
    missing = subprocess.run(
        run + ["to-official", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    tiny = LanguageBind.tiny(("depth",)).save(tmp_path / "tiny")  # a WordPiece text tokenizer: not CLIP's BPE
    assert main(["to-official", str(tiny), "--out", str(tmp_path / "o2")]) == 2
    both = write_checkpoint(tmp_path / "a", "audio")
    assert main(["to-vidal", f"video={both}", "--out", str(tmp_path / "o3")]) == 2


def test_a_tower_trained_from_a_clip_start_drops_into_the_official_layout(tmp_path):
    """vidal's own route (init_from a CLIP checkpoint, temporal blocks copied from the spatial ones) exports
    to what the official forward computes."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from tests.languagebind_ckpt import write_tokenizer

    clip_dir = tmp_path / "clip"
    clip_dir.mkdir()
    vocab = write_tokenizer(clip_dir)
    CLIPTokenizer.from_pretrained(clip_dir).save_pretrained(clip_dir)
    text = {
        "vocab_size": vocab,
        "hidden_size": 24,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "eos_token_id": vocab - 1,
        "bos_token_id": vocab - 2,
        "pad_token_id": vocab - 1,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(clip_dir)
    model = LanguageBind.from_config(
        {
            "init_from": str(clip_dir),
            "text": {"name_or_path": str(clip_dir), "pooling": "clip"},
            "modalities": {
                "video": {
                    "image_size": 32,
                    "patch_size": 8,
                    "num_frames": 4,
                    "lora": {"r": 2},
                    "frame_class_embedding": True,
                },
                "depth": {"image_size": 32, "patch_size": 8, "lora": {"r": 0}},
            },
        }
    )
    with torch.no_grad():
        for name, p in model.towers["video"].named_parameters():
            if "lora_B" in name or "time_embedding" in name:
                p.add_(0.1 * torch.randn_like(p))
    for modality in ("video", "depth"):
        out = tmp_path / f"official_{modality}"
        assert (
            main(
                [
                    "to-official",
                    str(model.save(tmp_path / "vidal")),
                    "--modality",
                    modality,
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        sd, config = load_reference(out)
        x = official_input(config)
        expected = F.normalize(reference_vision(sd, config, x), dim=-1)
        assert (model.encode(modality, to_vidal(x)) - expected).abs().max() < 1e-4, modality
        assert config["model_type"] == {"video": "LanguageBindVideo", "depth": "LanguageBindDepth"}[modality]
        if modality == "video":  # exported as V1.5: a class token per frame, a Conv3d patch
            assert config["vision_config"]["clip_type"] == "vl_new"
            assert sd["vision_model.embeddings.patch_embedding.weight"].ndim == 5
    again = LanguageBind.load(tmp_path / "official_depth")
    assert (again.encode_text(TEXTS) - model.encode_text(TEXTS)).abs().max() < 1e-5
    with pytest.raises(ValueError, match="not"):
        model.encode(
            "video", torch.zeros(1, 3, 4, 32, 32)
        )  # the official [B, C, T, H, W] layout, untransposed
