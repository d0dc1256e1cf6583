"""Loading from a CLIP checkpoint directory, save/load round trips, configs, the inference API."""

from __future__ import annotations

import io
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPConfig, CLIPModel

from model import LanguageBind, ModelConfig, similarity, zero_shot_classify
from model.model_config import tiny_config
from model.text import minilm_path
from model.towers import interpolate_positions

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one intra-op thread beats two (thread hand-offs cost more than the math)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """A tiny CLIPModel (28 px, patch 14: a 2 x 2 grid) and a tokenizer, saved with save_pretrained."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "eos_token_id": tokenizer.sep_token_id,
            "bos_token_id": tokenizer.cls_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 48,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 28,
            "patch_size": 14,
        },
        projection_dim=24,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip")
    CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def clip_config(clip_dir: Path) -> dict:
    return {
        "init_from": str(clip_dir),
        "text": {"name_or_path": str(clip_dir)},
        "modalities": {
            "video": {"image_size": 28, "num_frames": 4},
            "audio": {"image_size": [126, 1036]},
            "depth": {"image_size": 28, "in_channels": 1},
        },
    }


def test_towers_initialise_from_a_clip_checkpoint_with_shape_adaptations(clip_dir: Path) -> None:
    clip = CLIPModel.from_pretrained(clip_dir)
    model = LanguageBind.from_config(clip_config(clip_dir))
    source = clip.vision_model.state_dict()
    video = model.towers["video"]
    # sizes come from the checkpoint, and the saved config needs it no more
    assert model.config.modalities["video"].width == 48 and model.config.init_from is None
    layer = video.vision.encoder.layers[1]
    assert torch.equal(layer.mlp.fc1.weight, source["encoder.layers.1.mlp.fc1.weight"])
    assert torch.equal(
        layer.self_attn.q_proj.base_layer.weight, source["encoder.layers.1.self_attn.q_proj.weight"]
    )
    assert torch.equal(video.projection.weight, clip.visual_projection.weight)
    # temporal blocks copy the *loaded* spatial attention
    assert torch.equal(
        video.temporal[1].attn.v_proj.base_layer.weight, source["encoder.layers.1.self_attn.v_proj.weight"]
    )
    # audio: 2 x 2 positions interpolated to the 9 x 74 grid, class position kept
    positions = model.towers["audio"].vision.embeddings.position_embedding.weight
    assert positions.shape == (1 + 9 * 74, 48)
    assert torch.equal(positions[0], source["embeddings.position_embedding.weight"][0])
    torch.testing.assert_close(
        positions, interpolate_positions(source["embeddings.position_embedding.weight"], (9, 74))
    )
    assert not torch.allclose(positions[1], positions[-1])


def test_position_interpolation_keeps_constant_and_ramp_grids() -> None:
    constant = torch.full((1 + 16 * 16, 4), 0.3)
    constant[0] = 7.0
    out = interpolate_positions(constant, (9, 74))
    assert out.shape == (1 + 9 * 74, 4) and out[0].eq(7.0).all()
    torch.testing.assert_close(out[1:], torch.full((9 * 74, 4), 0.3))
    ramp = torch.zeros(1 + 16 * 16, 1)
    ramp[1:, 0] = torch.arange(16.0).repeat(16)  # value = column index
    grid = interpolate_positions(ramp, (9, 74))[1:, 0].view(9, 74)
    assert torch.allclose(grid, grid[:1].expand(9, 74))  # no change down the rows
    assert (grid[0].diff() >= -1e-5).all() and grid[0, 0] < 0.5 and grid[0, -1] > 14.5


def test_one_channel_depth_and_clip_text_tower_from_the_checkpoint(clip_dir: Path) -> None:
    clip = CLIPModel.from_pretrained(clip_dir)
    model = LanguageBind.from_config(clip_config(clip_dir))
    # depth with one channel: summed RGB filters, so x and RGB (x, x, x) give the same patches
    depth = model.towers["depth"].vision.embeddings.patch_embedding
    rgb = clip.vision_model.embeddings.patch_embedding
    x = torch.randn(1, 1, 28, 28)
    torch.testing.assert_close(depth(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-5, rtol=1e-4)
    # the text tower is the checkpoint's, projection included, and frozen
    assert model.text.pooling == "clip" and model.text.dim == 24
    assert torch.equal(model.text.projection.weight, clip.text_projection.weight)
    assert not any(p.requires_grad for p in model.text.parameters())
    out = model(
        {
            "text": ["a", "b"],
            "video": torch.randn(2, 4, 3, 28, 28),
            "audio": torch.randn(2, 3, 126, 1036),
            "depth": torch.randn(2, 1, 28, 28),
        }
    )
    assert out["video"].shape == out["audio"].shape == out["depth"].shape == (2, 24)


def test_save_load_round_trip_tiny(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = LanguageBind.tiny(("video", "audio"), {"loss": "siglip"})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "logit" in name:
                p.add_(torch.randn_like(p) * 0.1)  # state that differs from a fresh build
    model.save(tmp_path / "m")
    loaded = LanguageBind.load(tmp_path / "m")
    assert loaded.config == model.config
    for (n1, a), (n2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(a, b), n1
    batch = {"text": ["x", "y"], "video": torch.randn(2, 8, 3, 32, 32)}
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batch)["video"], loaded(batch)["video"])


def test_save_after_merge_and_self_contained_text_export(clip_dir: Path, tmp_path: Path) -> None:
    model = LanguageBind.from_config(clip_config(clip_dir)).merge_lora()
    model.save(tmp_path / "m", include_text=True)
    assert (tmp_path / "m" / "text" / "config.json").exists()
    loaded = LanguageBind.load(tmp_path / "m")
    assert not any("lora" in k for k in loaded.state_dict())
    torch.testing.assert_close(loaded.encode_text(["a red car"]), model.encode_text(["a red car"]))
    clip = torch.randn(1, 4, 3, 28, 28)
    torch.testing.assert_close(loaded.encode("video", clip), model.encode("video", clip))


def test_yaml_configs_validate_and_tiny_matches_code() -> None:
    assert ModelConfig.load(CONFIGS / "tiny.yaml") == tiny_config()
    paper = ModelConfig.load(CONFIGS / "languagebind_vit_l14.yaml")
    assert paper.init_from == "laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K"
    assert paper.modalities["audio"].grid == (9, 74)
    lora = {m: (c.lora.r, c.lora.dropout, c.patch_dropout) for m, c in paper.modalities.items()}
    assert lora == {
        "video": (16, 0.0, 0.3),
        "infrared": (2, 0.1, 0.5),
        "depth": (2, 0.1, 0.5),
        "audio": (16, 0.1, 0.3),
    }
    demo = ModelConfig.load(CONFIGS / "demo.yaml")
    assert demo.text.name_or_path == "minilm"


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match="modalities.smell"):
        ModelConfig.load({"modalities": {"smell": {}}})
    with pytest.raises(ValueError, match="patch_dropuot"):
        ModelConfig.load({"modalities": {"video": {"patch_dropuot": 0.1}}})
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        ModelConfig.load({"modalities": {"depth": {"image_size": 30, "patch_size": 8}}})


def test_minilm_text_tower_sets_the_shared_dim() -> None:
    model = LanguageBind.from_config(
        {"text": {"name_or_path": "minilm"}, "modalities": {"depth": tiny_config().modalities["depth"]}}
    )
    assert model.text.pooling == "mean" and model.text.dim == 384
    emb = model.encode_text(["a dog barks", "a puppy is barking", "stock market report"])
    sims = similarity(emb, emb)
    assert sims[0, 1] > sims[0, 2] + 0.2  # the real sentence encoder, not random weights
    assert model.encode("depth", torch.randn(2, 3, 32, 32)).shape == (2, 384)


def test_encode_raw_files_in_chunks_and_zero_shot(tmp_path: Path) -> None:
    model = LanguageBind.tiny(("infrared",))
    paths = []
    for i in range(5):
        buf = io.BytesIO()
        Image.fromarray(np.full((40, 40), i * 50, np.uint8), mode="L").save(buf, format="JPEG")
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(buf.getvalue())
    model.train()
    chunked = model.encode("infrared", paths, batch_size=2)
    assert chunked.shape == (5, 32) and model.training  # mode restored
    whole = model.encode(
        "infrared", torch.stack([model.preprocess_input("infrared", p) for p in paths]), batch_size=8
    )
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-4)
    probs = zero_shot_classify(
        model, "infrared", paths, ["hot", "cold", "warm"], ["a {} object", "something {}"]
    )
    assert probs.shape == (5, 3)
    torch.testing.assert_close(probs.sum(1), torch.ones(5))
