"""Towers: shapes, frozen parts, LoRA counts, patch dropout, temporal attention, text cache."""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch import nn

from model import LanguageBind
from model.vision import PatchDropout

WIDTH, LAYERS = 32, 2  # the tiny towers


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one intra-op thread beats two (thread hand-offs cost more than the math)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny() -> LanguageBind:
    torch.manual_seed(0)
    return LanguageBind.tiny()


def tiny_batch(batch: int = 3) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "text": [f"caption {i}" for i in range(batch)],
        "video": torch.randn(batch, 8, 3, 32, 32, generator=g),
        "audio": torch.randn(batch, 3, 126, 1036, generator=g),
        "depth": torch.randn(batch, 3, 32, 32, generator=g),
        "infrared": torch.randn(batch, 3, 32, 32, generator=g),
    }


@pytest.mark.parametrize("training", [True, False])
def test_every_modality_gives_normalised_embeddings(tiny: LanguageBind, training: bool) -> None:
    tiny.train(training)
    out = tiny(tiny_batch())
    for key in ("text", "video", "audio", "depth", "infrared"):
        assert out[key].shape == (3, WIDTH) and out[key].dtype == torch.float32
        torch.testing.assert_close(out[key].norm(dim=-1), torch.ones(3))
    for scale in out["logit_scale"].values():
        assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert "logit_bias" not in out


def test_frozen_parameters_get_no_gradient_and_do_not_move() -> None:
    torch.manual_seed(0)
    model = LanguageBind.tiny(("video", "depth"))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    # What must be frozen: the text tower, position embeddings, base attention and MLP weights.
    assert any(n.startswith("text.") for n in frozen) and not any(n.startswith("text.") for n in trainable)
    for pattern in (
        "position_embedding",
        "q_proj.base_layer",
        "out_proj.base_layer",
        "mlp.fc1",
        "temporal.0.attn.k_proj.base",
    ):
        assert any(pattern in n for n in frozen) and not any(pattern in n for n in trainable), pattern
    for pattern in ("class_embedding", "lora_A", "lora_B", "time_embedding", "projection", "logit_scale"):
        assert any(pattern in n for n in trainable), pattern
    opt = torch.optim.AdamW(model.optimizer_groups(lr=1e-2, weight_decay=0.1, coef_lr=0.5))
    batch = tiny_batch()
    out = model(batch)
    for modality in ("video", "depth"):
        loss = -(out[modality] * out["text"]).sum() * out["logit_scale"][modality]
        loss.backward(retain_graph=True)
    opt.step()
    params = dict(model.named_parameters())
    for name, before in frozen.items():
        assert params[name].grad is None, name
        assert torch.equal(params[name], before), name
    moved = [n for n, before in trainable.items() if not torch.equal(params[n], before)]
    assert any("lora_B" in n for n in moved) and any("class_embedding" in n for n in moved)


@pytest.mark.parametrize(
    ("modality", "rank", "temporal"), [("video", 16, True), ("depth", 2, False), ("audio", 16, False)]
)
def test_lora_parameter_count_follows_rank(modality: str, rank: int, temporal: bool) -> None:
    model = LanguageBind.tiny((modality,))  # LanguageBind's default rank per modality
    count = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    # Each adapted Linear(W, W) gains A (r x W) and B (W x r); q, k, v, out in every attention,
    # one attention per layer plus one per temporal block for video.
    attentions = LAYERS * (2 if temporal else 1)
    assert count == attentions * 4 * (rank * WIDTH + WIDTH * rank)


def test_lora_rank_and_dropout_come_from_config() -> None:
    model = LanguageBind.tiny(("depth",), {"modalities": {"depth": {"lora": {"r": 4, "dropout": 0.25}}}})
    q = model.towers["depth"].vision.encoder.layers[0].self_attn.q_proj
    assert q.r["default"] == 4 and q.lora_dropout["default"].p == 0.25
    assert q.scaling["default"] == pytest.approx(16 / 4)  # alpha / r
    none = LanguageBind.tiny(("depth",), {"modalities": {"depth": {"lora": {"r": 0}}}})
    assert not any("lora_" in n for n, _ in none.named_parameters())


def test_patch_dropout_keeps_the_ratio_and_the_same_patches_in_every_frame() -> None:
    clips, frames, patches, dim = 4, 8, 64, 6
    # Each token carries its patch index and clip number, so the output shows what was kept.
    index = torch.arange(patches, dtype=torch.float32)[None, None, :, None]
    clip_id = torch.arange(clips, dtype=torch.float32)[:, None, None, None]
    tokens = (
        (index + 1000 * clip_id).expand(clips, frames, patches, dim).reshape(clips * frames, patches, dim)
    )
    drop = PatchDropout(0.5).train()
    out = drop(tokens, frames)
    assert out.shape == (clips * frames, 32, dim)
    kept = out[..., 0].view(clips, frames, 32)
    for c in range(clips):
        assert (kept[c] // 1000 == c).all()
        assert len(set(kept[c, 0].tolist())) == 32  # no patch twice
        for f in range(1, frames):
            assert torch.equal(kept[c, f], kept[c, 0])
    assert not torch.equal(kept[0, 0] % 1000, kept[1, 0] % 1000)  # clips draw their own patches
    assert torch.equal(drop.eval()(tokens, frames), tokens)


def test_tower_applies_patch_dropout_only_in_training(tiny: LanguageBind) -> None:
    tower = tiny.towers["depth"]  # p = 0.5 on a 4 x 4 grid
    seen = []
    hook = tower.patch_dropout.register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    x = torch.randn(2, 3, 32, 32)
    tower.train()(x)
    tower.eval()(x)
    hook.remove()
    assert seen == [8, 16]


def test_temporal_attention_starts_as_a_copy_of_the_spatial_attention(tiny: LanguageBind) -> None:
    tower = tiny.towers["video"]
    for block, layer in zip(tower.temporal, tower.vision.encoder.layers, strict=True):
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            t, s = getattr(block.attn, name).base_layer, getattr(layer.self_attn, name).base_layer
            assert torch.equal(t.weight, s.weight) and torch.equal(t.bias, s.bias)
        assert torch.equal(block.norm.weight, layer.layer_norm1.weight)


def test_video_embedding_depends_on_frame_order(tiny: LanguageBind) -> None:
    clip = torch.randn(1, 8, 3, 32, 32)
    tower = tiny.towers["video"].eval()
    with torch.no_grad():
        forward, backward = tower(clip), tower(clip.flip(1))
    assert not torch.allclose(forward, backward, atol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    model = LanguageBind.tiny(("video",), {"modalities": {"video": {"lora": {"dropout": 0.1}}}})
    batch = tiny_batch(2)

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        model.set_gradient_checkpointing(checkpointing)
        torch.manual_seed(7)  # same patch-dropout and LoRA-dropout draws
        out = model(batch)
        (out["video"] * out["text"]).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and plain
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], atol=1e-6, rtol=1e-5)


def test_merge_lora_keeps_the_function_and_exports_plain_names() -> None:
    torch.manual_seed(0)
    model = LanguageBind.tiny(("video", "infrared"))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; make the adapters matter
            nn.init.normal_(p, std=0.05)
    model.eval()
    batch = tiny_batch(2)
    with torch.no_grad():
        before = model(batch)
        merged = model.merge_lora()
        after = merged(batch)
    for m in ("video", "infrared"):
        torch.testing.assert_close(before[m], after[m], atol=1e-5, rtol=1e-4)
    keys = merged.state_dict().keys()
    assert not any("lora" in k or "base_layer" in k for k in keys)
    assert "towers.video.vision.encoder.layers.0.self_attn.q_proj.weight" in keys
    assert merged.config.modalities["video"].lora.r == 0


def test_optimizer_groups_scale_lr_and_skip_decay() -> None:
    model = LanguageBind.tiny(("video",))
    groups = {g["name"]: g for g in model.optimizer_groups(lr=1e-3, weight_decay=0.2, coef_lr=0.1)}
    assert groups["lora/decay"]["lr"] == 1e-3 and groups["other/decay"]["lr"] == pytest.approx(1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in groups["other/no_decay"]["params"]}
    assert groups["other/no_decay"]["weight_decay"] == 0.0
    assert {"logit_scale.video", "towers.video.vision.embeddings.class_embedding"} <= no_decay
    assert "towers.video.projection.weight" in {names[id(p)] for p in groups["other/decay"]["params"]}
    total = sum(len(g["params"]) for g in groups.values())
    assert total == sum(p.requires_grad for p in model.parameters())


def test_logit_scale_is_clamped_at_100() -> None:
    model = LanguageBind.tiny(("depth",))
    with torch.no_grad():
        model.logit_scale["depth"].fill_(8.0)
    assert model.logit_scale_of("depth").item() == pytest.approx(100.0)
    model.clamp_logit_scale_()
    assert model.logit_scale["depth"].item() == pytest.approx(math.log(100.0))
    siglip = LanguageBind.tiny(("depth",), {"loss": "siglip"})
    out = siglip({"depth": torch.randn(2, 3, 32, 32), "text": ["a", "b"]})
    assert out["logit_scale"]["depth"].item() == pytest.approx(10.0)
    assert out["logit_bias"]["depth"].item() == -10.0


def test_text_cache_is_an_lru_and_changes_nothing() -> None:
    model = LanguageBind.tiny(("depth",), {"text": {"cache_size": 3}})
    text = model.text
    fresh = text.embed(["a", "b", "c", "d"])
    # (batches pad to different lengths, hence float tolerance rather than equality)
    torch.testing.assert_close(text(["a", "b", "c"]), fresh[:3], atol=1e-6, rtol=1e-5)
    text(["a"])  # a becomes the most recent
    torch.testing.assert_close(text(["d", "a"]), fresh[[3, 0]], atol=1e-6, rtol=1e-5)
    assert list(text.cache) == ["c", "d", "a"]  # b was least recently used
    model.load_state_dict(model.state_dict())
    assert not text.cache  # new weights invalidate the cache
    model.train()
    assert not text.encoder.training  # frozen tower never runs dropout
