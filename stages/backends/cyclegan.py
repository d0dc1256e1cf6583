"""A ResNet image-to-image generator (CycleGAN / pix2pix style) in plain PyTorch, and the key layouts of
the common checkpoints it loads.

Architecture (Johnson et al. 2016, as CycleGAN uses it): reflect-padded 7x7 conv, two stride-2 3x3
convs, N residual blocks (reflect-padded 3x3 convs), two stride-2 transposed convs, reflect-padded 7x7
conv and tanh; instance norm (convs with bias) or batch norm (convs without). Inputs and outputs are in
[-1, 1].

Checkpoint layouts (detected from the keys; N blocks and the width are read from the shapes):

- ``junyanz``: pytorch-CycleGAN-and-pix2pix ``latest_net_G_A.pth``: one ``nn.Sequential`` named
  ``model``, so each layer is ``model.<index>.…`` and block convs are ``model.<i>.conv_block.<j>.…``.
- ``mmagic``: MMagic / MMEditing / MMGeneration ``ResnetGenerator``: ``model.<i>.conv.…`` (a ConvModule
  per layer, norm under ``bn``) and ``model.<i>.block.<j>.conv.…``; a whole CycleGAN checkpoint holds
  one generator per domain under ``generators.<domain>.`` inside ``state_dict``.

The names in this module are our own; ``to_native`` maps either layout onto them.
"""

from __future__ import annotations

import re

import torch
from torch import nn

NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class ConvLayer(nn.Module):
    """(pad) -> conv or transposed conv -> norm -> activation."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        reflect: int = 0,
        padding: int = 0,
        norm: str = "instance",
        act: str = "relu",
        transpose: bool = False,
    ):
        super().__init__()
        self.pad = nn.ReflectionPad2d(reflect) if reflect else nn.Identity()
        bias = norm != "batch"  # a batch norm's shift makes a conv bias redundant (CycleGAN's choice)
        if transpose:
            self.conv = nn.ConvTranspose2d(cin, cout, kernel, stride, padding, output_padding=1, bias=bias)
        else:
            self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=bias)
        self.norm = {
            "instance": nn.InstanceNorm2d(cout),
            "batch": nn.BatchNorm2d(cout),
            "none": nn.Identity(),
        }[norm]
        self.act = {"relu": nn.ReLU(inplace=True), "tanh": nn.Tanh(), "none": nn.Identity()}[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(self.pad(x))))


class ResidualBlock(nn.Module):
    def __init__(self, dim: int, norm: str):
        super().__init__()
        self.first = ConvLayer(dim, dim, 3, reflect=1, norm=norm)
        self.second = ConvLayer(dim, dim, 3, reflect=1, norm=norm, act="none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.second(self.first(x))


class ResnetGenerator(nn.Module):
    """ResNet generator; ``blocks`` is 9 for 256 px CycleGAN models, 6 for 128 px ones."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        width: int = 64,
        blocks: int = 9,
        norm: str = "instance",
    ):
        super().__init__()
        self.stem = ConvLayer(in_channels, width, 7, reflect=3, norm=norm)
        self.down = nn.ModuleList(
            [
                ConvLayer(width, width * 2, 3, 2, padding=1, norm=norm),
                ConvLayer(width * 2, width * 4, 3, 2, padding=1, norm=norm),
            ]
        )
        self.blocks = nn.ModuleList([ResidualBlock(width * 4, norm) for _ in range(blocks)])
        self.up = nn.ModuleList(
            [
                ConvLayer(width * 4, width * 2, 3, 2, padding=1, norm=norm, transpose=True),
                ConvLayer(width * 2, width, 3, 2, padding=1, norm=norm, transpose=True),
            ]
        )
        self.head = ConvLayer(width, out_channels, 7, reflect=3, norm="none", act="tanh")
        self.multiple = 4  # two stride-2 levels: sides divisible by 4 come back at the same size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.down:
            x = layer(x)
        for block in self.blocks:
            x = block(x)
        for layer in self.up:
            x = layer(x)
        return self.head(x)


# -- checkpoint layouts ------------------------------------------------------------------------------
def detect_layout(state: dict[str, torch.Tensor]) -> str:
    """``junyanz`` or ``mmagic`` from the keys of one generator's state dict."""
    if any(".conv_block." in k for k in state):
        return "junyanz"
    if any(re.match(r"^model\.\d+\.(conv|block)\.", k) for k in state):
        return "mmagic"
    sample = ", ".join(sorted(state)[:4])
    raise ValueError(f"not a CycleGAN ResNet generator state dict (keys like {sample})")


def _prefix_map(layout: str, state: dict[str, torch.Tensor]) -> tuple[dict[str, str], int, str]:
    """Our module prefix -> the checkpoint's, plus the block count and norm kind read from the keys."""
    if layout == "junyanz":
        n = len({k.split(".")[1] for k in state if ".conv_block." in k})
        dropout = not any(".conv_block.5." in k for k in state)  # with dropout, index 5 is a padding layer
        batch = "model.2.weight" in state
        second, second_norm = (6, 7) if dropout else (5, 6)
        m = {
            "stem.conv": "model.1",
            "stem.norm": "model.2",
            "down.0.conv": "model.4",
            "down.0.norm": "model.5",
            "down.1.conv": "model.7",
            "down.1.norm": "model.8",
            "up.0.conv": f"model.{10 + n}",
            "up.0.norm": f"model.{11 + n}",
            "up.1.conv": f"model.{13 + n}",
            "up.1.norm": f"model.{14 + n}",
            "head.conv": f"model.{17 + n}",
        }
        for b in range(n):
            base = f"model.{10 + b}.conv_block"
            m |= {
                f"blocks.{b}.first.conv": f"{base}.1",
                f"blocks.{b}.first.norm": f"{base}.2",
                f"blocks.{b}.second.conv": f"{base}.{second}",
                f"blocks.{b}.second.norm": f"{base}.{second_norm}",
            }
    else:
        n = len({k.split(".")[1] for k in state if re.match(r"^model\.\d+\.block\.", k)})
        dropout = any(re.match(r"^model\.\d+\.block\.2\.", k) for k in state)
        batch = "model.0.bn.weight" in state
        m = {
            "stem.conv": "model.0.conv",
            "stem.norm": "model.0.bn",
            "down.0.conv": "model.1.conv",
            "down.0.norm": "model.1.bn",
            "down.1.conv": "model.2.conv",
            "down.1.norm": "model.2.bn",
            "up.0.conv": f"model.{3 + n}.conv",
            "up.0.norm": f"model.{3 + n}.bn",
            "up.1.conv": f"model.{4 + n}.conv",
            "up.1.norm": f"model.{4 + n}.bn",
            "head.conv": f"model.{5 + n}.conv",
        }
        for b in range(n):
            base = f"model.{3 + b}.block"
            m |= {
                f"blocks.{b}.first.conv": f"{base}.0.conv",
                f"blocks.{b}.first.norm": f"{base}.0.bn",
                f"blocks.{b}.second.conv": f"{base}.{2 if dropout else 1}.conv",
                f"blocks.{b}.second.norm": f"{base}.{2 if dropout else 1}.bn",
            }
    return m, n, "batch" if batch else "instance"


def to_native(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, int | str]]:
    """Rename a junyanz or mmagic generator state dict to this module's names.

    Returns the renamed state and the architecture it implies (``in_channels``, ``out_channels``,
    ``width``, ``blocks``, ``norm``). Keys that fit nowhere are kept under their own names, so a strict
    load reports them as unexpected.
    """
    layout = detect_layout(state)
    mapping, n, norm = _prefix_map(layout, state)
    if norm == "instance":  # PyTorch < 0.4 stored (unused) running statistics for instance norm
        state = {k: v for k, v in state.items() if not k.endswith(NORM_BUFFERS)}
    theirs_to_ours = {v: k for k, v in mapping.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        ours = theirs_to_ours.get(prefix)
        out[f"{ours}.{leaf}" if ours else key] = value
    stem, head = out.get("stem.conv.weight"), out.get("head.conv.weight")
    if stem is None or head is None:
        raise ValueError(
            f"{layout} layout without a first or last conv (keys like {', '.join(sorted(state)[:4])})"
        )
    arch = {
        "in_channels": stem.shape[1],
        "out_channels": head.shape[0],
        "width": stem.shape[0],
        "blocks": n,
        "norm": norm,
    }
    return out, arch


def tiny_generator(seed: int = 0) -> ResnetGenerator:
    """A tiny random-weight generator (width 8, 2 blocks) for tests and the demo."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ResnetGenerator(width=8, blocks=2).eval()
