"""CycleGAN ResNet generator checkpoints in the two common layouts load into our generator and compute
what the architecture says.

The layouts, as facts from the public code (nothing copied):

- junyanz/pytorch-CycleGAN-and-pix2pix ``models/networks.py`` ``ResnetGenerator``: one Sequential
  ``model``: [0 ReflectionPad(3), 1 Conv 7x7, 2 norm, 3 ReLU, 4 Conv 3x3/2, 5 norm, 6 ReLU, 7 Conv 3x3/2,
  8 norm, 9 ReLU, 10.. N ResnetBlocks (``conv_block``: 0 pad, 1 conv, 2 norm, 3 ReLU, [Dropout], pad,
  conv, norm), then ConvTranspose 3x3/2 + norm + ReLU twice, ReflectionPad(3), Conv 7x7, Tanh];
  with instance norm the convs have biases and the norms no parameters.
- open-mmlab/mmagic ``models/editors/cyclegan/cyclegan_generator.py``: ``model`` of ConvModules
  (``.conv``, batch norm as ``.bn``), residual blocks with ``block.0`` / ``block.1`` ConvModules,
  two deconv ConvModules, a final ConvModule; the CycleGAN model keeps one generator per domain in
  ``generators`` (a ModuleDict), saved under ``state_dict``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stages.backends.cyclegan import ResnetGenerator, detect_layout, to_native
from stages.backends.infrared import build_cyclegan


def _conv(key: str, cout: int, cin: int, k: int, g: torch.Generator, transpose: bool = False) -> dict:
    shape = (cin, cout, k, k) if transpose else (cout, cin, k, k)
    return {
        f"{key}.weight": torch.randn(shape, generator=g) * 0.2,
        f"{key}.bias": torch.randn(cout, generator=g) * 0.1,
    }


def junyanz_state(blocks: int = 2, width: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random generator state in junyanz's layout (instance norm, no dropout)."""
    g = torch.Generator().manual_seed(seed)
    w, n = width, blocks
    s = _conv("model.1", w, 3, 7, g) | _conv("model.4", 2 * w, w, 3, g) | _conv("model.7", 4 * w, 2 * w, 3, g)
    for b in range(n):
        s |= _conv(f"model.{10 + b}.conv_block.1", 4 * w, 4 * w, 3, g)
        s |= _conv(f"model.{10 + b}.conv_block.5", 4 * w, 4 * w, 3, g)
    s |= _conv(f"model.{10 + n}", 2 * w, 4 * w, 3, g, transpose=True)
    s |= _conv(f"model.{13 + n}", w, 2 * w, 3, g, transpose=True)
    return s | _conv(f"model.{17 + n}", 3, w, 7, g)


def mmagic_state(junyanz: dict[str, torch.Tensor], blocks: int) -> dict[str, torch.Tensor]:
    """The same weights named as MMagic's ResnetGenerator names them."""
    n = blocks
    rename = {
        "model.1": "model.0.conv",
        "model.4": "model.1.conv",
        "model.7": "model.2.conv",
        f"model.{10 + n}": f"model.{3 + n}.conv",
        f"model.{13 + n}": f"model.{4 + n}.conv",
        f"model.{17 + n}": f"model.{5 + n}.conv",
    }
    for b in range(n):
        rename |= {
            f"model.{10 + b}.conv_block.1": f"model.{3 + b}.block.0.conv",
            f"model.{10 + b}.conv_block.5": f"model.{3 + b}.block.1.conv",
        }
    return {f"{rename[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in junyanz.items()}


def reference_forward(s: dict[str, torch.Tensor], x: torch.Tensor, n: int) -> torch.Tensor:
    """The ResNet generator written out with functional ops, straight from the layout above."""

    def conv(x, key, stride=1, pad=0, reflect=0):
        if reflect:
            x = F.pad(x, (reflect,) * 4, mode="reflect")
        return F.conv2d(x, s[f"{key}.weight"], s[f"{key}.bias"], stride=stride, padding=pad)

    def up(x, key):
        return F.relu(
            F.instance_norm(
                F.conv_transpose2d(
                    x, s[f"{key}.weight"], s[f"{key}.bias"], stride=2, padding=1, output_padding=1
                )
            )
        )

    x = F.relu(F.instance_norm(conv(x, "model.1", reflect=3)))
    x = F.relu(F.instance_norm(conv(x, "model.4", stride=2, pad=1)))
    x = F.relu(F.instance_norm(conv(x, "model.7", stride=2, pad=1)))
    for b in range(n):
        h = F.relu(F.instance_norm(conv(x, f"model.{10 + b}.conv_block.1", reflect=1)))
        x = x + F.instance_norm(conv(h, f"model.{10 + b}.conv_block.5", reflect=1))
    x = up(up(x, f"model.{10 + n}"), f"model.{13 + n}")
    return torch.tanh(conv(x, f"model.{17 + n}", reflect=3))


def test_junyanz_layout_loads_and_computes_the_reference():
    state = junyanz_state(blocks=2, width=8)
    assert detect_layout(state) == "junyanz"
    net = build_cyclegan(state, "cyclegan:test", domain="a")
    x = torch.rand(2, 3, 20, 28) * 2 - 1
    with torch.inference_mode():
        assert torch.allclose(net(x), reference_forward(state, x, 2), atol=1e-5)


def test_mmagic_checkpoint_picks_the_target_domain_generator():
    thermal, photo = junyanz_state(2, 8, seed=1), junyanz_state(2, 8, seed=2)
    ckpt = {
        "meta": {"epoch": 10},
        "state_dict": {
            **{f"generators.thermal.{k}": v for k, v in mmagic_state(thermal, 2).items()},
            **{f"generators.photo.{k}": v for k, v in mmagic_state(photo, 2).items()},
            "discriminators.thermal.model.0.conv.weight": torch.zeros(4, 3, 4, 4),
        },
    }
    net = build_cyclegan(ckpt, "cyclegan:test", domain="thermal")
    x = torch.rand(1, 3, 16, 24) * 2 - 1
    with torch.inference_mode():
        assert torch.allclose(net(x), reference_forward(thermal, x, 2), atol=1e-5)
    try:
        build_cyclegan(ckpt, "cyclegan:test", domain="a")
    except Exception as e:
        assert "set infrared.target_domain to one of ['photo', 'thermal']" in str(e)
    else:
        raise AssertionError("an absent domain must fail")


def test_batch_norm_and_dropout_variants_are_read_from_the_keys():
    net = ResnetGenerator(width=4, blocks=1, norm="batch")
    # junyanz's batch-norm layout: norms are separate Sequential entries; dropout shifts conv2 to index 6
    s = {
        "model.1.weight": net.stem.conv.weight,
        "model.2.weight": torch.ones(4),
        "model.2.bias": torch.zeros(4),
        "model.2.running_mean": torch.zeros(4),
        "model.2.running_var": torch.ones(4),
        "model.2.num_batches_tracked": torch.tensor(0),
    }
    native, arch = to_native(
        {
            **s,
            "model.10.conv_block.1.weight": torch.zeros(16, 16, 3, 3),
            "model.10.conv_block.6.weight": torch.zeros(16, 16, 3, 3),
            "model.18.weight": torch.zeros(3, 4, 7, 7),
            "model.18.bias": torch.zeros(3),
        }
    )
    assert arch == {"in_channels": 3, "out_channels": 3, "width": 4, "blocks": 1, "norm": "batch"}
    assert "blocks.0.second.conv.weight" in native and "stem.norm.running_var" in native
