"""Our MUNIT generator: the sRGB-TIR checkpoint layout, its normalisation layers, and translation shapes.

Where the expected layout comes from (facts read from public code, none of it copied here):

- MUNIT, NVlabs/MUNIT ``networks.py`` (also vendored unchanged in sRGB-TIR's ``networks.py``):
  ``AdaINGen`` has ``enc_style`` (StyleEncoder with 4 downsamplings), ``enc_content`` (ContentEncoder,
  instance norm), ``dec`` (Decoder, AdaIN residual blocks then upsample + 5x5 conv + LayerNorm per
  level, 7x7 conv + tanh) and ``mlp`` (3 linear layers). Each conv sits in a ``Conv2dBlock`` whose
  conv is ``.conv`` and norm ``.norm``; LayerNorm's affine parameters are ``gamma``/``beta``; AdaIN has
  dummy ``running_mean``/``running_var`` buffers; ``Sequential``s are named ``model`` everywhere, and
  ``mlp`` layers are ``LinearBlock``s whose linear is ``.fc``.
- sRGB-TIR, ``configs/tir2rgb_folder.yaml`` ``gen`` section: dim 64, mlp_dim 256, style_dim 8,
  activ relu, n_downsample 2, n_res 4, pad_type reflect; input_dim_a = input_dim_b = 3.
- sRGB-TIR ``trainer.py`` saves ``{'a': gen_a.state_dict(), 'b': gen_b.state_dict()}``; its README
  runs RGB -> TIR with ``--a2b 0``, i.e. ``gen_b.encode`` then ``gen_a.decode``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stages.backends.munit import (
    MunitArch,
    MunitGenerator,
    MunitTranslator,
    SampleNorm,
    StyleNorm,
    strip_legacy_keys,
)


def conv(prefix: str, cout: int, cin: int, k: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (cout, cin, k, k), f"{prefix}.bias": (cout,)}


def expected_srgb_tir_layout() -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of one sRGB-TIR generator, from the documentation above."""
    e: dict[str, tuple[int, ...]] = {}
    # style encoder: 7x7 conv to 64, two 4x4 stride-2 doublings (128, 256), two more at 256, pool, 1x1 to 8
    e |= conv("enc_style.model.0.conv", 64, 3, 7) | conv("enc_style.model.1.conv", 128, 64, 4)
    e |= conv("enc_style.model.2.conv", 256, 128, 4) | conv("enc_style.model.3.conv", 256, 256, 4)
    e |= conv("enc_style.model.4.conv", 256, 256, 4) | conv("enc_style.model.6", 8, 256, 1)
    # content encoder: 7x7 to 64, 4x4 stride-2 to 128 and 256, then 4 residual blocks of two 3x3 convs
    e |= conv("enc_content.model.0.conv", 64, 3, 7) | conv("enc_content.model.1.conv", 128, 64, 4)
    e |= conv("enc_content.model.2.conv", 256, 128, 4)
    for b in range(4):
        for j in range(2):
            e |= conv(f"enc_content.model.3.model.{b}.model.{j}.conv", 256, 256, 3)
    # decoder: 4 AdaIN residual blocks (with their dummy buffers), then upsample + 5x5 conv + LN twice, 7x7 to 3
    for b in range(4):
        for j in range(2):
            p = f"dec.model.0.model.{b}.model.{j}"
            e |= conv(f"{p}.conv", 256, 256, 3) | {
                f"{p}.norm.running_mean": (256,),
                f"{p}.norm.running_var": (256,),
            }
    e |= conv("dec.model.2.conv", 128, 256, 5) | {
        "dec.model.2.norm.gamma": (128,),
        "dec.model.2.norm.beta": (128,),
    }
    e |= conv("dec.model.4.conv", 64, 128, 5) | {
        "dec.model.4.norm.gamma": (64,),
        "dec.model.4.norm.beta": (64,),
    }
    e |= conv("dec.model.5.conv", 3, 64, 7)
    # style MLP: 8 -> 256 -> 256 -> 2 (shift, scale) x 256 channels x 8 AdaIN layers
    e |= {
        "mlp.model.0.fc.weight": (256, 8),
        "mlp.model.0.fc.bias": (256,),
        "mlp.model.1.fc.weight": (256, 256),
        "mlp.model.1.fc.bias": (256,),
        "mlp.model.2.fc.weight": (4096, 256),
        "mlp.model.2.fc.bias": (4096,),
    }
    return e


def test_generator_matches_the_srgb_tir_parameter_layout():
    with torch.device("meta"):
        gen = MunitGenerator(MunitArch())
    got = {k: tuple(v.shape) for k, v in gen.state_dict().items()}
    expected = expected_srgb_tir_layout()
    assert sorted(set(got) - set(expected)) == [] and sorted(set(expected) - set(got)) == []
    assert got == expected
    assert sum(v.numel() for v in gen.state_dict().values()) == sum(
        torch.Size(s).numel() for s in expected.values()
    )


def test_style_norm_equals_adain_as_batch_norm_over_samples_and_channels():
    # MUNIT computes AdaIN as batch norm in training mode over a (1, B*C, H, W) view: check ours agrees
    torch.manual_seed(0)
    x = torch.randn(3, 5, 6, 7) * 4 + 2
    shift, scale = torch.randn(3, 5), torch.rand(3, 5) + 0.5
    reference = F.batch_norm(
        x.reshape(1, 15, 6, 7),
        torch.zeros(15),
        torch.ones(15),
        scale.reshape(-1),
        shift.reshape(-1),
        True,
        0.1,
        1e-5,
    ).reshape(3, 5, 6, 7)
    assert torch.allclose(StyleNorm(5)(x, shift, scale), reference, atol=1e-5)


def test_sample_norm_uses_per_sample_mean_and_unbiased_std():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 5) * 3 + 1
    norm = SampleNorm(4)
    flat = x.reshape(2, -1)
    mean = flat.mean(1)
    std = ((flat - mean[:, None]) ** 2).sum(1).div(flat.shape[1] - 1).sqrt()
    manual = (x - mean.view(2, 1, 1, 1)) / (std.view(2, 1, 1, 1) + 1e-5)
    manual = manual * norm.gamma.view(1, 4, 1, 1) + norm.beta.view(1, 4, 1, 1)
    assert torch.allclose(norm(x), manual, atol=1e-5)


@pytest.mark.parametrize("size", [(16, 24), (20, 36)])
def test_translator_keeps_the_size_and_range(size):
    arch = MunitArch(dim=4, mlp_dim=8, n_res=1)
    net = MunitTranslator(MunitGenerator(arch), MunitGenerator(arch)).eval()
    x = torch.rand(2, 3, *size) * 2 - 1
    with torch.inference_mode():
        y = net(x, torch.randn(2, arch.style_dim))
    assert y.shape == x.shape and y.abs().max() <= 1


def test_style_code_changes_the_output_and_content_does_not_depend_on_it():
    torch.manual_seed(1)
    arch = MunitArch(dim=4, mlp_dim=8, n_res=1)
    net = MunitTranslator(MunitGenerator(arch), MunitGenerator(arch)).eval()
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.inference_mode():
        a, b = net(x, torch.randn(1, 8)), net(x, torch.randn(1, 8))
        both = net(x.expand(2, -1, -1, -1), torch.cat([torch.zeros(1, 8), torch.ones(1, 8)]))
        one = net(x, torch.ones(1, 8))
    assert not torch.allclose(a, b)
    assert torch.allclose(both[1:], one, atol=1e-5)  # per-sample styles inside one batch


def test_pytorch_0_3_instance_norm_statistics_are_dropped():
    state = MunitGenerator(MunitArch(dim=4, mlp_dim=8, n_res=1)).state_dict()
    legacy = dict(
        state,
        **{
            "enc_content.model.0.norm.running_mean": torch.zeros(4),
            "enc_content.model.3.model.0.model.1.norm.running_var": torch.ones(16),
        },
    )
    assert strip_legacy_keys(legacy).keys() == state.keys()
