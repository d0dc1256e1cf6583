"""Released LanguageBind checkpoints load into vidal and give the official embeddings.

Each variant is a small random checkpoint in the released layout (tests/languagebind_ckpt.py); the
reference is a forward written from the official architecture, independent of ``model``.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch
import torch.nn.functional as F

from model import LanguageBind
from tests.languagebind_ckpt import (
    VARIANTS,
    load_reference,
    reference_text,
    reference_vision,
    write_checkpoint,
    write_hub_cache,
)

TEXTS = ["the dog", "a cat barks at the dog", "bark", ""]
MODALITY = {"video": "video", "audio": "audio", "depth": "depth", "thermal": "infrared", "image": "image"}


def official_input(config: dict, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A random input in the official layout (video ``[B, C, T, H, W]``)."""
    g = torch.Generator().manual_seed(seed)
    v = config["vision_config"]
    if v.get("num_mel_bins"):
        return torch.randn(batch, 3, v["num_mel_bins"], v["target_length"], generator=g)
    if v.get("add_time_attn"):
        return torch.randn(batch, 3, v["num_frames"], 32, 32, generator=g)
    return torch.randn(batch, 3, 32, 32, generator=g)


def to_vidal(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2) if x.ndim == 5 else x  # video: [B, C, T, H, W] -> [B, T, C, H, W]


def modality_of(variant: str) -> str:
    return MODALITY[VARIANTS[variant][0].removeprefix("LanguageBind").lower()]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_released_variant_gives_the_official_embeddings(tmp_path, variant):
    path = write_checkpoint(
        tmp_path / variant, variant, seed=len(variant), position_ids=True, base_layer=variant == "audio_lora"
    )
    model = LanguageBind.load(path)
    sd, config = load_reference(path)
    modality = modality_of(variant)
    assert model.modalities == (modality,)
    x = official_input(config)
    expected = F.normalize(reference_vision(sd, config, x), dim=-1)
    got = model.encode(modality, to_vidal(x))
    assert (got - expected).abs().max() < 1e-4
    tokens = model.text.tokenizer(
        TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    )
    text = F.normalize(reference_text(sd, config, tokens["input_ids"], tokens["attention_mask"]), dim=-1)
    assert (model.encode_text(TEXTS) - text).abs().max() < 1e-4
    assert model.logit_scale_of(modality).item() == pytest.approx(sd["logit_scale"].exp().item(), rel=1e-6)


def test_audio_grid_follows_mel_bins_and_target_length(tmp_path):
    for variant, bins in (("audio", 112), ("audio_126", 126)):
        model = LanguageBind.load(write_checkpoint(tmp_path / variant, variant))
        tower = model.towers["audio"]
        assert tower.cfg.image_size == (bins, 1036)
        assert tower.vision.embeddings.position_embedding.weight.shape[0] == (bins // 14) * 74 + 1


def test_a_lora_checkpoint_is_merged_at_load(tmp_path):
    path = write_checkpoint(tmp_path / "lora", "video_lora")
    model = LanguageBind.load(path)
    assert not any("lora" in k for k in model.state_dict())
    sd, config = load_reference(path)
    base = sd["vision_model.encoder.base_model.model.layers.0.temporal_attn.q_proj.weight"]
    loaded = model.towers["video"].temporal[0].attn.q_proj.weight
    assert not torch.allclose(base, loaded)  # the adapter changed the weight


def test_several_checkpoints_share_one_text_tower(tmp_path):
    video = write_checkpoint(tmp_path / "video", "video", seed=1)
    audio = write_checkpoint(
        tmp_path / "audio", "audio", seed=2, position_ids=True
    )  # buffers are no difference
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same text weights: no warning
        model = LanguageBind.load({"video": video, "audio": audio})
    assert model.modalities == ("video", "audio")
    for path, modality in ((video, "video"), (audio, "audio")):
        sd, config = load_reference(path)
        x = official_input(config)
        expected = F.normalize(reference_vision(sd, config, x), dim=-1)
        assert (model.encode(modality, to_vidal(x)) - expected).abs().max() < 1e-4
        assert model.logit_scale_of(modality).item() == pytest.approx(
            sd["logit_scale"].exp().item(), rel=1e-6
        )


def test_differing_text_towers_are_named_and_text_from_picks_one(tmp_path):
    video = write_checkpoint(tmp_path / "video", "video", text_seed=1)
    depth = write_checkpoint(tmp_path / "depth", "depth", text_seed=2)
    with pytest.warns(UserWarning, match=r"text towers differ: using the depth checkpoint's"):
        model = LanguageBind.load({"video": video, "depth": depth}, text_from="depth")
    sd, config = load_reference(depth)
    tokens = model.text.tokenizer(TEXTS, padding=True, return_tensors="pt")
    text = F.normalize(reference_text(sd, config, tokens["input_ids"], tokens["attention_mask"]), dim=-1)
    assert (model.encode_text(TEXTS) - text).abs().max() < 1e-4


def test_a_missing_or_unexpected_key_fails_naming_it(tmp_path):
    path = write_checkpoint(tmp_path / "video", "video")
    sd = torch.load(path / "pytorch_model.bin", weights_only=True)
    del sd["vision_model.encoder.layers.1.temporal_layer_norm1.bias"]
    sd["vision_model.encoder.layers.0.temporal_mlp.fc1.weight"] = torch.zeros(4, 4)
    torch.save(sd, path / "pytorch_model.bin")
    with pytest.raises(KeyError) as info:
        LanguageBind.load(path)
    assert "vision_model.encoder.layers.1.temporal_layer_norm1.bias" in str(info.value)
    assert "vision_model.encoder.layers.0.temporal_mlp.fc1.weight" in str(info.value)


def test_a_checkpoint_given_as_the_wrong_modality_is_refused(tmp_path):
    path = write_checkpoint(tmp_path / "depth", "depth")
    with pytest.raises(ValueError, match="LanguageBindDepth checkpoint"):
        LanguageBind.load({"video": path})


def test_a_hub_id_loads_through_the_hub_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = write_hub_cache(tmp_path / "hub", "LanguageBind/LanguageBind_Image", "image")
    model = LanguageBind.load("LanguageBind/LanguageBind_Image", cache_dir=tmp_path / "hub")
    sd, config = load_reference(snapshot)
    x = official_input(config)
    assert (
        model.encode("image", x) - F.normalize(reference_vision(sd, config, x), dim=-1)
    ).abs().max() < 1e-4
    with pytest.raises(FileNotFoundError, match="LanguageBind/LanguageBind_Audio"):
        LanguageBind.load("LanguageBind/LanguageBind_Audio", cache_dir=tmp_path / "hub")
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_a_loaded_release_saves_and_reloads_as_a_vidal_model(tmp_path):
    path = write_checkpoint(tmp_path / "v15", "video_v15")
    model = LanguageBind.load(path)
    reloaded = LanguageBind.load(model.save(tmp_path / "export"))
    _, config = load_reference(path)
    x = to_vidal(official_input(config))
    assert torch.allclose(model.encode("video", x), reloaded.encode("video", x), atol=1e-6)
    assert torch.allclose(model.encode_text(TEXTS), reloaded.encode_text(TEXTS), atol=1e-6)
    assert reloaded.config.preprocess == "languagebind"


def test_evaluation_and_export_loaders_take_a_release(tmp_path):
    from model.checkpoint import load_model

    path = write_checkpoint(tmp_path / "thermal", "thermal")
    model, meta = load_model(path)
    assert model.modalities == ("infrared",) and meta == {}
    sd, config = load_reference(path)
    x = official_input(config)
    assert (
        model.encode("infrared", x) - F.normalize(reference_vision(sd, config, x), dim=-1)
    ).abs().max() < 1e-4
