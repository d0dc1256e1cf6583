"""The infrared stage: 8-bit single-channel JPEGs, reproducible style codes, strict checkpoint loading
(MUNIT / sRGB-TIR and CycleGAN layouts) and clear errors for bad checkpoints."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from contracts.backends import ModelLoadError
from contracts.config_io import ConfigError
from pipeline.config import load_config
from stages.backends.infrared import style_codes
from stages.backends.munit import TINY_ARCH, MunitGenerator
from stages.base import RunContext
from stages.infrared import InfraredStage
from tests.test_infrared_cyclegan import junyanz_state


def jpeg(h: int, w: int, seed: int = 0, channels: int = 3) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (h, w, channels) if channels > 1 else (h, w)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def make_stage(**overrides) -> InfraredStage:
    base = {"model": "tiny", "short_side": 64, "model_batch": 4}
    cfg = load_config(None, [f"infrared.{k}={v}" for k, v in {**base, **overrides}.items()])
    return InfraredStage(cfg.infrared, RunContext(root="/tmp/unused"))


def run(stage: InfraredStage, frames: dict[str, list[bytes]]) -> dict[str, dict]:
    table = pa.table({"video_id": list(frames), "frames": list(frames.values())})
    return {r["video_id"]: r for r in stage.process(table).to_pylist()}


@pytest.fixture(scope="module")
def tiny_stage() -> InfraredStage:
    stage = make_stage()
    stage.check()
    stage.setup()
    return stage


@pytest.mark.parametrize("model", ["tiny", "tiny:cyclegan"])
def test_output_is_one_8_bit_channel_of_the_frame_size(model):
    stage = make_stage(model=model)
    stage.setup()
    sizes = [(48, 85), (1, 1), (33, 17), (300, 400)]
    out = run(
        stage, {"a": [jpeg(h, w, i) for i, (h, w) in enumerate(sizes)], "b": [jpeg(20, 30, 9, channels=1)]}
    )
    assert out["a"]["status"] == "ok" and out["a"]["infrared_model"] == model
    for data, (h, w) in zip(out["a"]["ir"], sizes):
        img = Image.open(io.BytesIO(data))
        assert img.format == "JPEG" and img.mode == "L" and img.size == (w, h)
    big = np.asarray(Image.open(io.BytesIO(out["a"]["ir"][3])))
    assert big.dtype == np.uint8 and big.max() - big.min() > 100  # min-max stretched
    assert out["b"]["status"] == "ok"


def test_style_codes_are_seeded_by_video_and_frame():
    a = style_codes(["v1/0", "v1/1", "v2/0"], 8)
    assert torch.equal(a, style_codes(["v1/0", "v1/1", "v2/0"], 8))
    assert torch.equal(a[2], style_codes(["v2/0"], 8)[0])  # independent of its neighbours
    assert not torch.allclose(a[0], a[1]) and not torch.allclose(a[0], a[2])
    assert not torch.equal(a, style_codes(["v1/0", "v1/1", "v2/0"], 8, seed=1))


def test_infrared_is_reproducible_whatever_the_batch(tiny_stage):
    frames = [jpeg(40, 64, i) for i in range(3)]
    together = run(tiny_stage, {"x": frames, "y": frames, "z": [jpeg(40, 64, 7)]})
    alone = run(tiny_stage, {"y": frames})
    assert together["y"]["ir"] == alone["y"]["ir"]
    # same pixels, another video id: another style code, another image
    assert together["x"]["ir"] != together["y"]["ir"]


def test_a_bad_frame_fails_only_its_video(tiny_stage):
    out = run(tiny_stage, {"good": [jpeg(30, 40)], "bad": [jpeg(30, 40), b"\x00garbage"], "empty": []})
    assert out["good"]["status"] == "ok"
    assert out["bad"]["status"] == "failed" and out["bad"]["error"].startswith(
        "infrared: frame 1: not a decodable"
    )
    assert out["empty"]["status"] == "failed"


# -- checkpoints -------------------------------------------------------------------------------------
def tiny_arch_overrides() -> dict[str, object]:
    return {f"munit.{k}": v for k, v in TINY_ARCH.model_dump().items()}


def test_munit_checkpoint_loads_strictly_rgb_encoder_and_thermal_decoder(tmp_path):
    torch.manual_seed(3)
    gen_a, gen_b = MunitGenerator(TINY_ARCH), MunitGenerator(TINY_ARCH)
    path = tmp_path / "translation_weights.pt"
    torch.save({"a": gen_a.state_dict(), "b": gen_b.state_dict()}, path)
    stage = make_stage(model=f"munit:{path}", **tiny_arch_overrides())
    stage.check()
    stage.setup()
    net = stage.net.net
    assert torch.equal(net.content.model[0].conv.weight, gen_b.enc_content.model[0].conv.weight)  # RGB = b
    assert torch.equal(net.mlp.model[2].fc.weight, gen_a.mlp.model[2].fc.weight)  # thermal = a
    assert torch.equal(net.decoder.model[-1].conv.weight, gen_a.dec.model[-1].conv.weight)
    out = run(stage, {"v": [jpeg(40, 64)]})
    assert out["v"]["status"] == "ok" and out["v"]["infrared_model"] == f"munit:{path}"


def test_pre_zip_checkpoints_with_pytorch_0_3_statistics_load(tmp_path):
    # MUNIT-era files: the legacy (non-zip) torch.save format, instance-norm statistics in enc_content
    gen_a, gen_b = MunitGenerator(TINY_ARCH), MunitGenerator(TINY_ARCH)
    old_b = dict(
        gen_b.state_dict(),
        **{
            "enc_content.model.0.norm.running_mean": torch.zeros(8),
            "enc_content.model.0.norm.running_var": torch.ones(8),
        },
    )
    path = tmp_path / "old.pt"
    torch.save({"a": gen_a.state_dict(), "b": old_b}, path, _use_new_zipfile_serialization=False)
    stage = make_stage(model=f"munit:{path}", **tiny_arch_overrides())
    stage.check()
    stage.setup()
    assert torch.equal(stage.net.net.content.model[0].conv.weight, gen_b.enc_content.model[0].conv.weight)


def test_checkpoint_of_another_shape_fails_listing_the_keys(tmp_path):
    path = tmp_path / "other.pt"
    other = TINY_ARCH.model_copy(update={"n_res": 2})
    torch.save({"a": MunitGenerator(other).state_dict(), "b": MunitGenerator(other).state_dict()}, path)
    with pytest.raises(ModelLoadError) as e:
        make_stage(model=f"munit:{path}", **tiny_arch_overrides()).check()
    msg = str(e.value)
    assert (
        "does not fit the architecture" in msg
        and "unexpected (enc_content.model.3.model.1.model.0.conv.weight" in msg
    )
    assert "mlp.model.2.fc.weight (256, 16) vs (128, 16)" in msg and "\n" not in msg


def test_missing_truncated_and_foreign_checkpoints_fail_before_any_row(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(
        {"a": MunitGenerator(TINY_ARCH).state_dict(), "b": MunitGenerator(TINY_ARCH).state_dict()}, good
    )
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cyclegan = tmp_path / "latest_net_G_A.pth"
    torch.save(junyanz_state(blocks=2, width=8), cyclegan)
    pickled = tmp_path / "pickled.pt"
    torch.save({"a": {"note": Fraction(1, 3)}, "b": {}}, pickled)  # not a tensor type
    cases = {
        tmp_path / "absent.pt": "checkpoint not found",
        truncated: "unreadable or truncated",
        cyclegan: "expected a MUNIT generator checkpoint with domains 'b' and 'a'",
        pickled: "holds Python objects besides tensors",
    }
    for path, expected in cases.items():
        with pytest.raises(ModelLoadError, match=expected):
            make_stage(model=f"munit:{path}", **tiny_arch_overrides()).check()
        with pytest.raises(ModelLoadError, match=expected):  # the actor's own load says the same
            make_stage(model=f"munit:{path}", **tiny_arch_overrides()).setup()


def test_cyclegan_checkpoint_loads_by_its_shapes(tmp_path):
    path = tmp_path / "latest_net_G_A.pth"
    state = junyanz_state(blocks=3, width=8)
    torch.save(state, path)
    stage = make_stage(model=f"cyclegan:{path}")
    stage.check()
    stage.setup()
    assert len(stage.net.net.blocks) == 3
    assert torch.equal(stage.net.net.head.conv.weight, state["model.20.weight"])
    assert run(stage, {"v": [jpeg(40, 64)]})["v"]["status"] == "ok"


def test_config_rejects_unknown_model_families():
    with pytest.raises(ConfigError, match="infrared.model"):
        load_config(None, ["infrared.model=hf:some/model"])
    with pytest.raises(ConfigError, match="infrared.munit.n_res"):
        load_config(None, ["infrared.munit.n_res=-1"])
