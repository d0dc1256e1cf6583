"""The DPT network of the original MiDaS / DPT releases (intel-isl), built on timm backbones.

The released ``.pt`` files are state dicts of one module tree: ``pretrained.model`` (a timm encoder:
ViT-L/16, ViT-B + ResNet-50 hybrid, BEiT, Swin-V2 or LeViT), ``pretrained.act_postprocess{1..4}`` (the
reassemble layers that turn token maps into a 4-level feature pyramid), and ``scratch`` (the
``layer{k}_rn`` 3x3 projections, the ``refinenet{k}`` fusion blocks and the ``output_conv`` head).
``MidasDPT`` rebuilds that tree with the same names and shapes, so a released file loads strictly
(after ``midas.original_to_timm`` renames the few encoder keys that timm 1.x moved), and runs its own
forward over the timm modules: the hooks, token grids and interpolations of the release, written here
rather than patched into timm's classes.

The encoders are created with ``pretrained=False``: every weight comes from the user's file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

FEATURES = 256  # channels of the fusion path in every DPT release


@dataclass(frozen=True)
class Variant:
    """One released model: its timm encoder, where features are taken, and its input transform."""

    name: str  # MiDaS's model_type, also the stem of the released file
    timm_name: str  # the same encoder in timm 1.x
    family: str  # vit | hybrid | beit | swin2 | levit
    hooks: tuple[int, ...]  # encoder blocks whose outputs feed the decoder (MiDaS's numbering)
    widths: tuple[int, ...]  # channels of each reassembled feature map
    net_size: int  # the square training resolution
    keep_aspect: bool  # resize keeping the aspect ratio (to a multiple of 32) or to the square size
    release: str
    head: tuple[int, int] = (FEATURES, 32)  # channels of the head's two convolutions


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("dpt_beit_large_512", "beit_large_patch16_512", "beit", (5, 11, 17, 23),
                (256, 512, 1024, 1024), 512, True, "3.1"),
        Variant("dpt_beit_large_384", "beit_large_patch16_384", "beit", (5, 11, 17, 23),
                (256, 512, 1024, 1024), 384, True, "3.1"),
        Variant("dpt_beit_base_384", "beit_base_patch16_384", "beit", (2, 5, 8, 11),
                (96, 192, 384, 768), 384, True, "3.1"),
        Variant("dpt_swin2_large_384", "swinv2_large_window12to24_192to384", "swin2", (1, 1, 17, 1),
                (192, 384, 768, 1536), 384, False, "3.1"),
        Variant("dpt_swin2_base_384", "swinv2_base_window12to24_192to384", "swin2", (1, 1, 17, 1),
                (128, 256, 512, 1024), 384, False, "3.1"),
        Variant("dpt_swin2_tiny_256", "swinv2_tiny_window16_256", "swin2", (1, 1, 5, 1),
                (96, 192, 384, 768), 256, False, "3.1"),
        Variant("dpt_levit_224", "levit_384", "levit", (3, 11, 21), (384, 512, 768), 224, False, "3.1",
                head=(64, 8)),
        Variant("dpt_large_384", "vit_large_patch16_384", "vit", (5, 11, 17, 23),
                (256, 512, 1024, 1024), 384, True, "3.0"),
        Variant("dpt_hybrid_384", "vit_base_r50_s16_384", "hybrid", (0, 1, 8, 11),
                (256, 512, 768, 768), 384, True, "3.0"),
    )
}  # fmt: skip

# LeViT-384 in the release is one flat ``blocks`` list (timm 0.6): per stage, pairs of attention and
# MLP residuals, with an attention-subsample and an MLP between stages. timm 1.x nests it in
# ``stages[s].downsample`` / ``stages[s].blocks[j]``. One entry per flat index: (stage, block, part).
LEVIT_DEPTH = (4, 4, 4)
LEVIT_FLAT: list[tuple[int, int, str]] = []
for _s, _d in enumerate(LEVIT_DEPTH):
    if _s:
        LEVIT_FLAT += [(_s, -1, "attn"), (_s, -1, "mlp")]  # block -1: the stage's downsample
    for _j in range(_d):
        LEVIT_FLAT += [(_s, _j, "attn"), (_s, _j, "mlp")]


# -- the decoder (names are the release's, since they are the state dict's keys) ---------------------
class ResidualConvUnit(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """Adds the skip feature (through one residual unit), refines, upsamples (x2 or to ``size``), projects."""

    def __init__(self, channels: int):
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(channels)
        self.resConfUnit2 = ResidualConvUnit(channels)
        self.out_conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Upsample2x(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class ReadoutProject(nn.Module):
    """The class token joined to every patch token, projected back to the token width ("project")."""

    def __init__(self, width: int):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * width, width), nn.GELU())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, 1:]
        return self.project(torch.cat([patches, tokens[:, :1].expand_as(patches)], dim=-1))


class ConvTransposeBN(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        # output_padding=1: the release passes its "dilation=1" positionally into that slot, so sizes double
        self.c = nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.c(x))


def _reassemble(width: int, out: int, level: int) -> nn.Sequential:
    # Indices as in the release: 0 readout, 1-2 transpose/unflatten (done in forward), 3 1x1, 4 resample.
    layers: list[nn.Module] = [ReadoutProject(width), nn.Identity(), nn.Identity(), nn.Conv2d(width, out, 1)]
    if level == 0:
        layers.append(nn.ConvTranspose2d(out, out, 4, stride=4))
    elif level == 1:
        layers.append(nn.ConvTranspose2d(out, out, 2, stride=2))
    elif level == 3:
        layers.append(nn.Conv2d(out, out, 3, stride=2, padding=1))
    return nn.Sequential(*layers)


# -- the model ---------------------------------------------------------------------------------------
class MidasDPT(nn.Module):
    """DPT depth network of one released variant; ``forward`` maps normalised (B, 3, H, W) to (B, h, w)
    relative inverse depth (non-negative). H and W: multiples of 32 (16 for the token grid, and the
    decoder halves four times), or the square ``net_size`` for Swin-V2 and LeViT."""

    def __init__(self, variant: Variant):
        super().__init__()
        import timm

        self.variant = variant
        self.pretrained = nn.Module()
        self.pretrained.model = timm.create_model(variant.timm_name, pretrained=False)
        if variant.family in ("vit", "hybrid", "beit"):
            width = self.pretrained.model.embed_dim
            first = 2 if variant.family == "hybrid" else 0  # the hybrid's first two come from its ResNet
            for level in range(first, 4):
                self.pretrained.add_module(
                    f"act_postprocess{level + 1}", _reassemble(width, variant.widths[level], level)
                )
        self.scratch = nn.Module()
        for level, width in enumerate(variant.widths):
            self.scratch.add_module(
                f"layer{level + 1}_rn", nn.Conv2d(width, FEATURES, 3, padding=1, bias=False)
            )
        for level in range(len(variant.widths)):
            self.scratch.add_module(f"refinenet{level + 1}", FusionBlock(FEATURES))
        if variant.family == "levit":
            self.scratch.stem_transpose = nn.Sequential(
                ConvTransposeBN(FEATURES, FEATURES // 2), nn.Hardswish(),
                ConvTransposeBN(FEATURES // 2, FEATURES // 4), nn.Hardswish(),
            )  # fmt: skip
        h1, h2 = variant.head
        self.scratch.output_conv = nn.Sequential(
            nn.Conv2d(h1, h1 // 2, 3, padding=1), Upsample2x(),
            nn.Conv2d(h1 // 2, h2, 3, padding=1), nn.ReLU(),
            nn.Conv2d(h2, 1, 1), nn.ReLU(), nn.Identity(),
        )  # fmt: skip
        self._rel_pos_index: dict[tuple[int, int], torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        family = self.variant.family
        if family in ("vit", "hybrid"):
            levels = self._vit_features(x)
        elif family == "beit":
            levels = self._beit_features(x)
        elif family == "swin2":
            levels = self._swin_features(x)
        else:
            levels = self._levit_features(x)
        s = self.scratch
        projected = [getattr(s, f"layer{k + 1}_rn")(f) for k, f in enumerate(levels)]
        path = None
        for k in reversed(range(len(projected))):
            block = getattr(s, f"refinenet{k + 1}")
            size = projected[k - 1].shape[2:] if k else None
            path = block(projected[k], size=size) if path is None else block(path, projected[k], size=size)
        if family == "levit":
            path = s.stem_transpose(path)
        return s.output_conv(path).squeeze(1)

    # -- encoders: each returns the feature pyramid, finest first ------------------------------------
    def _tokens_to_map(self, level: int, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        layers = getattr(self.pretrained, f"act_postprocess{level + 1}")
        x = layers[0](tokens).transpose(1, 2).unflatten(2, grid)
        for layer in layers[3:]:
            x = layer(x)
        return x

    def _vit_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        m = self.pretrained.model
        grid = (x.shape[2] // 16, x.shape[3] // 16)
        levels: list[torch.Tensor] = []
        if self.variant.family == "hybrid":
            resnet = m.patch_embed.backbone
            x = resnet.stem(x)
            for k, stage in enumerate(resnet.stages):
                x = stage(x)
                if k < 2:
                    levels.append(x)  # stride 4 and 8 maps of the ResNet, used as they are
            x = resnet.norm(x)
        tokens = m.patch_embed.proj(x).flatten(2).transpose(1, 2)
        pos = m.pos_embed
        side = int((pos.shape[1] - 1) ** 0.5)
        grid_pos = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid_pos = F.interpolate(grid_pos, size=grid, mode="bilinear").flatten(2).transpose(1, 2)
        tokens = torch.cat([m.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + torch.cat([pos[:, :1], grid_pos], dim=1)
        hooks = self.variant.hooks[len(levels) :]
        for i, block in enumerate(m.blocks[: hooks[-1] + 1]):
            tokens = block(tokens)
            if i in hooks:
                levels.append(self._tokens_to_map(len(levels), tokens, grid))
        return levels

    def _beit_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        m = self.pretrained.model
        grid = (x.shape[2] // 16, x.shape[3] // 16)
        tokens = m.patch_embed.norm(m.patch_embed.proj(x).flatten(2).transpose(1, 2))
        tokens = torch.cat([m.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        levels: list[torch.Tensor] = []
        hooks = self.variant.hooks
        for i, block in enumerate(m.blocks[: hooks[-1] + 1]):
            tokens = self._beit_block(block, tokens, grid)
            if i in hooks:
                levels.append(self._tokens_to_map(len(levels), tokens, grid))
        return levels

    def _beit_block(self, block: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        attn = block.attn
        b, n, _ = x.shape
        bias = torch.cat([attn.q_bias, torch.zeros_like(attn.v_bias), attn.v_bias])
        qkv = F.linear(block.norm1(x), attn.qkv.weight, bias).reshape(b, n, 3, attn.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        mask = self._beit_rel_pos_bias(attn, grid).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = attn.proj(out.transpose(1, 2).reshape(b, n, -1))
        x = x + (out if block.gamma_1 is None else block.gamma_1 * out)
        out = block.mlp(block.norm2(x))
        return x + (out if block.gamma_2 is None else block.gamma_2 * out)

    def _beit_rel_pos_bias(self, attn: nn.Module, grid: tuple[int, int]) -> torch.Tensor:
        # The release's rule for other input sizes: the bias table, seen as a (2h-1, 2w-1) image per
        # head, resized bilinearly to the new window; the three class-token entries kept as they are.
        from timm.models.beit import gen_relative_position_index

        table = attn.relative_position_bias_table
        old_h, old_w = attn.window_size
        if tuple(grid) != (old_h, old_w):
            heads = table.shape[1]
            sub = table[:-3].reshape(1, 2 * old_h - 1, 2 * old_w - 1, heads).permute(0, 3, 1, 2)
            sub = F.interpolate(sub, size=(2 * grid[0] - 1, 2 * grid[1] - 1), mode="bilinear")
            table = torch.cat([sub.permute(0, 2, 3, 1).reshape(-1, heads), table[-3:]])
        index = self._rel_pos_index.get(grid)
        if index is None or index.device != table.device:
            index = self._rel_pos_index[grid] = gen_relative_position_index(grid).to(table.device)
        n = grid[0] * grid[1] + 1
        return table[index.view(-1)].view(n, n, -1).permute(2, 0, 1).unsqueeze(0)

    def _swin_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        # The release hooks the last block of each stage, before the merge that timm 0.6 placed at a
        # stage's end and timm 1.x at the next stage's start: so each timm 1.x stage output, NHWC.
        m = self.pretrained.model
        x = m.patch_embed(x)
        levels = []
        for stage in m.layers:
            x = stage(x)
            levels.append(x.permute(0, 3, 1, 2))
        return levels

    def _levit_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        m = self.pretrained.model
        x = m.stem(x)
        side = x.shape[2]
        tokens = x.flatten(2).transpose(1, 2)
        wanted = {LEVIT_FLAT[h][:2] for h in self.variant.hooks}  # (stage, block) after the MLP part
        levels = []
        for s, stage in enumerate(m.stages):
            if s:
                tokens = stage.downsample(tokens)
                side = (side + 1) // 2
            for j, block in enumerate(stage.blocks):
                tokens = block(tokens)
                if (s, j) in wanted:
                    levels.append(tokens.transpose(1, 2).unflatten(2, (side, side)))
            if len(levels) == len(wanted):
                break
        return levels
