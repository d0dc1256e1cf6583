"""A MUNIT generator in plain PyTorch, laid out so that released MUNIT / sRGB-TIR checkpoints load strictly.

MUNIT (Huang et al., 2018) splits an image into a content code (domain-invariant, spatial) and a style
code (a small vector). Translation from domain S to domain T encodes the content with S's content
encoder and decodes it with T's decoder, whose adaptive instance norm (AdaIN) layers take their
scale and shift from T's MLP applied to a style code (random, for a sampled look).

sRGB-TIR (Lee et al., ICRA 2023), which VIDAL used for infrared, is a MUNIT trained on synthetic RGB
and thermal images. Its checkpoint (``translation_weights.pt``) is ``{"a": gen_a_state, "b": gen_b_state}``
where each state dict is a whole generator (``enc_style``, ``enc_content``, ``dec``, ``mlp``); with its
config domain ``a`` is thermal and ``b`` is RGB, so RGB -> thermal uses ``b``'s content encoder and ``a``'s
decoder. The attribute names below (``model``, ``conv``, ``norm``, ``fc``, ``gamma``/``beta``) exist
only to match that parameter layout; tests/test_munit.py pins it.
"""

from __future__ import annotations

import re
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class MunitArch(BaseModel):
    """The generator hyper-parameters (MUNIT's ``gen`` section); the defaults are sRGB-TIR's config."""

    model_config = ConfigDict(extra="forbid")
    input_dim: int = Field(3, ge=1, description="image channels of both domains")
    dim: int = Field(64, ge=1, description="filters of the first conv layer")
    style_dim: int = Field(8, ge=1, description="length of the style code")
    mlp_dim: int = Field(256, ge=1, description="width of the style MLP")
    n_downsample: int = Field(2, ge=0, description="stride-2 convs in the content encoder")
    n_res: int = Field(4, ge=0, description="residual blocks in the content encoder and the decoder")
    activ: Literal["relu", "lrelu", "tanh"] = "relu"
    pad_type: Literal["reflect", "zero", "replicate"] = "reflect"


TINY_ARCH = MunitArch(dim=8, style_dim=8, mlp_dim=16, n_downsample=2, n_res=1)
# Written by PyTorch 0.3, whose InstanceNorm kept running statistics: unused, dropped before loading.
LEGACY_KEY = re.compile(r"^enc_content\..*\.norm\.(running_mean|running_var|num_batches_tracked)$")


def _activation(name: str) -> nn.Module:
    return {
        "relu": nn.ReLU(inplace=True),
        "lrelu": nn.LeakyReLU(0.2, inplace=True),
        "tanh": nn.Tanh(),
        "none": nn.Identity(),
    }[name]


def _padding(pad_type: str, size: int) -> nn.Module:
    return {"reflect": nn.ReflectionPad2d, "zero": nn.ZeroPad2d, "replicate": nn.ReplicationPad2d}[pad_type](
        size
    )


class StyleNorm(nn.Module):
    """Adaptive instance norm: per-sample, per-channel scale and shift given at call time (from the MLP).

    The two buffers are never used; MUNIT checkpoints carry them, so they are kept for a strict load.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, eps=1e-5) * scale[:, :, None, None] + shift[:, :, None, None]


class SampleNorm(nn.Module):
    """MUNIT's "layer norm": each sample normalised over (C, H, W) by mean and unbiased std, then a
    per-channel affine (``gamma``, ``beta``)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.rand(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        mean = flat.mean(1).view(-1, 1, 1, 1)
        std = flat.std(1).view(-1, 1, 1, 1)
        return (x - mean) / (std + self.eps) * self.gamma.view(1, -1, 1, 1) + self.beta.view(1, -1, 1, 1)


class ConvUnit(nn.Module):
    """pad -> conv -> norm -> activation, with the norm one of: none, instance, sample (LN), style (AdaIN)."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int, pad: int, norm: str, activ: str, pad_type: str
    ):
        super().__init__()
        self.pad = _padding(pad_type, pad)
        self.conv = nn.Conv2d(cin, cout, kernel, stride, bias=True)
        self.norm_kind = norm
        if norm == "instance":
            self.norm = nn.InstanceNorm2d(cout)
        elif norm == "sample":
            self.norm = SampleNorm(cout)
        elif norm == "style":
            self.norm = StyleNorm(cout)
        self.activation = _activation(activ)

    def forward(
        self, x: torch.Tensor, style: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        x = self.conv(self.pad(x))
        if self.norm_kind == "style":
            x = self.norm(x, *style)
        elif self.norm_kind != "none":
            x = self.norm(x)
        return self.activation(x)


class ResidualUnit(nn.Module):
    """Two 3x3 conv units with a skip connection; the second has no activation."""

    def __init__(self, dim: int, norm: str, activ: str, pad_type: str):
        super().__init__()
        self.model = nn.Sequential(
            ConvUnit(dim, dim, 3, 1, 1, norm, activ, pad_type),
            ConvUnit(dim, dim, 3, 1, 1, norm, "none", pad_type),
        )

    def forward(
        self, x: torch.Tensor, styles: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    ) -> torch.Tensor:
        first, second = self.model
        if styles is None:
            return x + second(first(x))
        return x + second(first(x, styles[0]), styles[1])


class ResidualStack(nn.Module):
    def __init__(self, n: int, dim: int, norm: str, activ: str, pad_type: str):
        super().__init__()
        self.model = nn.Sequential(*[ResidualUnit(dim, norm, activ, pad_type) for _ in range(n)])

    def forward(
        self, x: torch.Tensor, styles: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    ) -> torch.Tensor:
        for i, unit in enumerate(self.model):
            x = unit(x, None if styles is None else styles[2 * i : 2 * i + 2])
        return x


class ContentEncoder(nn.Module):
    """7x7 conv, ``n_downsample`` stride-2 4x4 convs, residual blocks; instance norm throughout."""

    def __init__(self, a: MunitArch):
        super().__init__()
        dim = a.dim
        layers: list[nn.Module] = [ConvUnit(a.input_dim, dim, 7, 1, 3, "instance", a.activ, a.pad_type)]
        for _ in range(a.n_downsample):
            layers.append(ConvUnit(dim, 2 * dim, 4, 2, 1, "instance", a.activ, a.pad_type))
            dim *= 2
        layers.append(ResidualStack(a.n_res, dim, "instance", a.activ, a.pad_type))
        self.model = nn.Sequential(*layers)
        self.output_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class StyleEncoder(nn.Module):
    """Not used to translate (the style is sampled), but part of every MUNIT generator checkpoint."""

    def __init__(self, a: MunitArch, n_downsample: int = 4):
        super().__init__()
        dim = a.dim
        layers: list[nn.Module] = [ConvUnit(a.input_dim, dim, 7, 1, 3, "none", a.activ, a.pad_type)]
        for i in range(n_downsample):
            out = dim * 2 if i < 2 else dim
            layers.append(ConvUnit(dim, out, 4, 2, 1, "none", a.activ, a.pad_type))
            dim = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, a.style_dim, 1, 1, 0)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Decoder(nn.Module):
    """AdaIN residual blocks, then (2x nearest upsample, 5x5 conv, layer norm) per level, then 7x7 conv + tanh."""

    def __init__(self, a: MunitArch, dim: int):
        super().__init__()
        layers: list[nn.Module] = [ResidualStack(a.n_res, dim, "style", a.activ, a.pad_type)]
        for _ in range(a.n_downsample):
            layers += [
                nn.Upsample(scale_factor=2),
                ConvUnit(dim, dim // 2, 5, 1, 2, "sample", a.activ, a.pad_type),
            ]
            dim //= 2
        layers.append(ConvUnit(dim, a.input_dim, 7, 1, 3, "none", "tanh", a.pad_type))
        self.model = nn.Sequential(*layers)
        self.res_dim = layers[0].model[0].model[0].conv.out_channels if a.n_res else dim
        self.n_style_layers = 2 * a.n_res

    def forward(self, content: torch.Tensor, adain: torch.Tensor) -> torch.Tensor:
        c = self.res_dim
        # The MLP output holds, per AdaIN layer in order, C shifts then C scales.
        styles = [
            (adain[:, 2 * c * i : 2 * c * i + c], adain[:, 2 * c * i + c : 2 * c * (i + 1)])
            for i in range(self.n_style_layers)
        ]
        x = self.model[0](content, styles)
        for layer in self.model[1:]:
            x = layer(x)
        return x


class LinearUnit(nn.Module):
    def __init__(self, cin: int, cout: int, activ: str):
        super().__init__()
        self.fc = nn.Linear(cin, cout, bias=True)
        self.activation = _activation(activ)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.fc(x))


class StyleMLP(nn.Module):
    """Style code -> AdaIN parameters: three linear layers."""

    def __init__(self, a: MunitArch, n_out: int):
        super().__init__()
        self.model = nn.Sequential(
            LinearUnit(a.style_dim, a.mlp_dim, a.activ),
            LinearUnit(a.mlp_dim, a.mlp_dim, a.activ),
            LinearUnit(a.mlp_dim, n_out, "none"),
        )

    def forward(self, style: torch.Tensor) -> torch.Tensor:
        return self.model(style.flatten(1))


class MunitGenerator(nn.Module):
    """One domain's generator (MUNIT's ``AdaINGen``): style and content encoders, decoder, style MLP."""

    def __init__(self, arch: MunitArch | None = None):
        super().__init__()
        a = arch or MunitArch()
        self.arch = a
        self.enc_style = StyleEncoder(a)
        self.enc_content = ContentEncoder(a)
        self.dec = Decoder(a, self.enc_content.output_dim)
        self.mlp = StyleMLP(a, 2 * 2 * a.n_res * self.enc_content.output_dim)


class MunitTranslator(nn.Module):
    """Source domain's content encoder + target domain's decoder and style MLP: images in [-1, 1] -> [-1, 1]."""

    def __init__(self, source: MunitGenerator, target: MunitGenerator):
        super().__init__()
        self.content = source.enc_content
        self.decoder = target.dec
        self.mlp = target.mlp
        self.style_dim = target.arch.style_dim
        self.multiple = 2**target.arch.n_downsample  # input sides must divide by this to keep the size

    def forward(self, images: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.content(images), self.mlp(style))


def strip_legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the unused instance-norm statistics that PyTorch 0.3 wrote into MUNIT content encoders."""
    return {k: v for k, v in state.items() if not LEGACY_KEY.match(k)}


def tiny_translator(seed: int = 0) -> MunitTranslator:
    """A tiny random-weight translator (same seed, same weights on every actor)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MunitTranslator(MunitGenerator(TINY_ARCH), MunitGenerator(TINY_ARCH)).eval()
