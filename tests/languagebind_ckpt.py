"""Small random checkpoints in LanguageBind's released layout, and a reference forward written from the
official architecture (PKU-YuanGroup/LanguageBind ``languagebind/*/modeling_*.py``) in plain torch.

Reusable by tests and benchmarks::

    from tests.languagebind_ckpt import write_checkpoint, write_hub_cache, reference_vision, reference_text
    path = write_checkpoint(tmp_path / "video", "video")              # or "video_v15", "audio", "audio_126",
    sd, config = load_reference(path)                                  # "depth", "thermal", "image",
    emb = reference_vision(sd, config, pixels)                         # "video_lora", "audio_lora"

The reference shares no code with ``model``: its own attention (explicit softmax), its own LoRA (peft's
unmerged forward ``base(x) + B(A(x)) * alpha / r``), its own embeddings. Video pixels are in the
official layout ``[B, C, T, H, W]``; audio ``[B, 3, num_mel_bins, target_length]``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

# Variant -> (model_type, vision_config overrides)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "video": ("LanguageBindVideo", {"add_time_attn": True, "num_frames": 4, "lora_r": 0}),
    "video_v15": (
        "LanguageBindVideo",
        {"add_time_attn": True, "num_frames": 4, "lora_r": 0, "clip_type": "vl_new"},
    ),
    "video_lora": (
        "LanguageBindVideo",
        {"add_time_attn": True, "num_frames": 4, "lora_r": 4, "lora_alpha": 16},
    ),
    "audio": (
        "LanguageBindAudio",
        {
            "patch_size": 14,
            "num_mel_bins": 112,
            "target_length": 1036,
            "lora_r": 0,
            "audio_mean": -4.2677393,
            "audio_std": 4.5689974,
            "audio_sample_rate": 16000,
        },
    ),
    "audio_126": (
        "LanguageBindAudio",
        {
            "patch_size": 14,
            "num_mel_bins": 126,
            "target_length": 1036,
            "lora_r": 0,
            "audio_mean": -4.2677393,
            "audio_std": 4.5689974,
        },
    ),
    "audio_lora": (
        "LanguageBindAudio",
        {
            "patch_size": 14,
            "num_mel_bins": 126,
            "target_length": 1036,
            "lora_r": 2,
            "lora_alpha": 16,
            "audio_mean": -4.2677393,
            "audio_std": 4.5689974,
        },
    ),
    "depth": ("LanguageBindDepth", {"lora_r": 0, "max_depth": 10}),
    "thermal": ("LanguageBindThermal", {"lora_r": 0}),
    "image": ("LanguageBindImage", {"lora_r": 0}),
}
# The released repos (LanguageBind/<name> on the hub) and the variant that has their structure.
RELEASED = {
    "LanguageBind_Video_FT": "video",
    "LanguageBind_Video": "video_lora",
    "LanguageBind_Video_V1.5_FT": "video_v15",
    "LanguageBind_Video_Huge_V1.5_FT": "video_v15",
    "LanguageBind_Video_merge": "video",
    "LanguageBind_Audio_FT": "audio",
    "LanguageBind_Audio": "audio_lora",
    "LanguageBind_Depth": "depth",
    "LanguageBind_Thermal": "thermal",
    "LanguageBind_Image": "image",
}
WIDTH, LAYERS, HEADS, MLP, PROJ = 32, 2, 2, 64, 16
TEXT_WIDTH = 24
VOCAB_MERGES = ["t h", "th e</w>", "d o", "do g</w>", "c a", "ca t</w>", "b a", "ba r", "bar k</w>"]


# -- tokenizer files -------------------------------------------------------------------------
def _byte_chars() -> list[str]:
    """GPT-2/CLIP's printable stand-in for each byte value."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_tokenizer(path: Path, model_type: str = "LanguageBindVideo") -> int:
    """A tiny CLIP BPE vocabulary (bytes, bytes + ``</w>``, a few merges, then the two specials, so
    ``<|endoftext|>`` has the highest id as in CLIP); returns the vocabulary size."""
    chars = _byte_chars()
    vocab = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in VOCAB_MERGES]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(VOCAB_MERGES) + "\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (path / "special_tokens_map.json").write_text(json.dumps(special))
    tokenizer_class = model_type + "Tokenizer"  # as the released repos name it
    (path / "tokenizer_config.json").write_text(
        json.dumps({**special, "tokenizer_class": tokenizer_class, "model_max_length": 77})
    )
    return len(vocab)


# -- weights -----------------------------------------------------------------------------------
def _layer_shapes(prefix: str, d: int, mlp: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        shapes[f"{prefix}self_attn.{proj}.weight"] = (d, d)
        shapes[f"{prefix}self_attn.{proj}.bias"] = (d,)
    for norm in ("layer_norm1", "layer_norm2"):
        shapes[f"{prefix}{norm}.weight"] = shapes[f"{prefix}{norm}.bias"] = (d,)
    shapes.update(
        {
            f"{prefix}mlp.fc1.weight": (mlp, d),
            f"{prefix}mlp.fc1.bias": (mlp,),
            f"{prefix}mlp.fc2.weight": (d, mlp),
            f"{prefix}mlp.fc2.bias": (d,),
        }
    )
    return shapes


def official_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every key of a released state dict (no LoRA) and its shape, from a config."""
    t, v = config["text_config"], config["vision_config"]
    e = config["projection_dim"]
    shapes: dict[str, tuple[int, ...]] = {
        "text_model.embeddings.token_embedding.weight": (t["vocab_size"], t["hidden_size"]),
        "text_model.embeddings.position_embedding.weight": (t["max_position_embeddings"], t["hidden_size"]),
        "text_model.final_layer_norm.weight": (t["hidden_size"],),
        "text_model.final_layer_norm.bias": (t["hidden_size"],),
        "text_projection.weight": (e, t["hidden_size"]),
        "visual_projection.weight": (e, v["hidden_size"]),
        "logit_scale": (),
    }
    for i in range(t["num_hidden_layers"]):
        shapes.update(
            _layer_shapes(f"text_model.encoder.layers.{i}.", t["hidden_size"], t["intermediate_size"])
        )
    d, p, frames = v["hidden_size"], v["patch_size"], v.get("num_frames", 1)
    vl_new = v.get("clip_type") == "vl_new"
    if v.get("num_mel_bins") and v.get("target_length"):
        grid = (v["num_mel_bins"] // p) * (v["target_length"] // p)
    else:
        grid = (v["image_size"] // p) ** 2
    shapes["vision_model.embeddings.class_embedding"] = (frames, d) if vl_new else (d,)
    shapes["vision_model.embeddings.patch_embedding.weight"] = (d, 3, 1, p, p) if vl_new else (d, 3, p, p)
    shapes["vision_model.embeddings.position_embedding.weight"] = (grid + 1, d)
    for name in ("pre_layrnorm", "post_layernorm"):
        shapes[f"vision_model.{name}.weight"] = shapes[f"vision_model.{name}.bias"] = (d,)
    for i in range(v["num_hidden_layers"]):
        prefix = f"vision_model.encoder.layers.{i}."
        shapes.update(_layer_shapes(prefix, d, v["intermediate_size"]))
        if v.get("add_time_attn"):
            shapes[prefix + "temporal_embedding"] = (1, frames, d)
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                shapes[f"{prefix}temporal_attn.{proj}.weight"] = (d, d)
                shapes[f"{prefix}temporal_attn.{proj}.bias"] = (d,)
            shapes[prefix + "temporal_layer_norm1.weight"] = shapes[prefix + "temporal_layer_norm1.bias"] = (
                d,
            )
    return shapes


def _random(shape: tuple[int, ...], key: str, g: torch.Generator) -> torch.Tensor:
    if key == "logit_scale":
        return torch.tensor(math.log(1 / 0.07) + 0.3 * torch.rand((), generator=g).item())
    if "norm" in key and key.endswith(".weight"):
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    if key.endswith("embedding") or "embedding." in key:
        return 0.5 * torch.randn(shape, generator=g)
    fan_in = shape[-1] if len(shape) > 1 else 16
    if len(shape) >= 4:  # patch conv: fan in = C * P * P
        fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=g) / math.sqrt(fan_in)


def make_config(
    variant: str,
    vocab_size: int,
    vision_sizes: dict[str, Any] | None = None,
    text_sizes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The config.json of a variant; ``*_sizes`` override the tiny sizes (e.g. ViT-L's for benchmarks)."""
    model_type, vision = VARIANTS[variant]
    config = {
        "architectures": [model_type],
        "model_type": model_type,
        "projection_dim": PROJ,
        "logit_scale_init_value": 2.6592,
        "initializer_factor": 1.0,
        "torch_dtype": "float32",
        "transformers_version": "4.31.0",
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": vocab_size,
            "hidden_size": TEXT_WIDTH,
            "intermediate_size": 2 * TEXT_WIDTH,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "projection_dim": PROJ,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "pad_token_id": 1,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": WIDTH,
            "intermediate_size": MLP,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "num_channels": 3,
            "image_size": 32,
            "patch_size": 8,
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-5,
            "projection_dim": PROJ,
            "add_time_attn": False,
            "num_frames": 1,
            "force_patch_dropout": 0.0,
            "lora_alpha": 16,
            "lora_dropout": 0.0,
            "num_mel_bins": 0,
            "target_length": 0,
            "video_decode_backend": "decord",
            **vision,
        },
    }
    config["vision_config"].update(vision_sizes or {})
    config["text_config"].update(text_sizes or {})
    if "projection_dim" in (vision_sizes or {}):
        config["projection_dim"] = config["text_config"]["projection_dim"] = vision_sizes["projection_dim"]
    return config


def _lora_targets(config: dict[str, Any]) -> tuple[str, ...]:
    # LanguageBind's convert_to_lora: temporal attention only when the tower has it, all attention otherwise.
    if config["vision_config"].get("add_time_attn"):
        return tuple(f"temporal_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj"))
    return tuple(f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj"))


def write_checkpoint(
    path: str | Path,
    variant: str = "video",
    seed: int = 0,
    *,
    base_layer: bool = False,
    position_ids: bool = False,
    text_seed: int = 1234,
    vision_sizes: dict[str, Any] | None = None,
    text_sizes: dict[str, Any] | None = None,
) -> Path:
    """A released-layout checkpoint directory for ``variant``; text weights come from ``text_seed`` (the
    same in every variant unless changed, as the released towers share one text encoder).

    LoRA variants use peft's layout under ``vision_model.encoder`` (``base_layer`` as newer peft writes
    it when ``base_layer``); ``position_ids`` adds the buffers older transformers saved. ``vision_sizes`` /
    ``text_sizes`` override config fields (``hidden_size``, ``num_hidden_layers``, ``image_size``, ...)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model_type = VARIANTS[variant][0]
    config = make_config(variant, write_tokenizer(path, model_type), vision_sizes, text_sizes)
    shapes = official_shapes(config)
    g, text_g = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(text_seed)
    state = {
        k: _random(s, k, text_g if k.startswith(("text_model.", "text_projection")) else g)
        for k, s in sorted(shapes.items())
    }
    if position_ids:
        n = shapes["vision_model.embeddings.position_embedding.weight"][0]
        state["vision_model.embeddings.position_ids"] = torch.arange(n)[None]
        state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    r = config["vision_config"]["lora_r"]
    if r:
        state = _peft_layout(state, _lora_targets(config), r, g, base_layer)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    torch.save(state, path / "pytorch_model.bin")
    return path


def write_hub_cache(cache: str | Path, repo_id: str, variant: str, **kwargs: Any) -> Path:
    """A checkpoint where ``huggingface_hub`` keeps a download (``models--owner--name/snapshots/<commit>``,
    ``refs/main``), so ``LanguageBind.load(repo_id)`` finds it offline; returns the snapshot directory."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    snapshot = write_checkpoint(repo / "snapshots" / commit, variant, **kwargs)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def _peft_layout(
    state: dict[str, torch.Tensor], targets: tuple[str, ...], r: int, g: torch.Generator, base_layer: bool
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith("vision_model.encoder."):
            out[key] = value
            continue
        key = "vision_model.encoder.base_model.model." + key[len("vision_model.encoder.") :]
        module, leaf = key.rsplit(".", 1)
        if module.endswith(targets):
            out[f"{module}.base_layer.{leaf}" if base_layer else key] = value
            if leaf == "weight":
                out[f"{module}.lora_A.default.weight"] = torch.randn(r, value.shape[1], generator=g) / 4
                out[f"{module}.lora_B.default.weight"] = torch.randn(value.shape[0], r, generator=g) / 4
        else:
            out[key] = value
    return out


# -- reference forward -----------------------------------------------------------------------
def load_reference(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The raw state dict and config of a checkpoint directory (no renaming, no merging)."""
    path = Path(path)
    return torch.load(path / "pytorch_model.bin", weights_only=True), json.loads(
        (path / "config.json").read_text()
    )


class _Weights:
    """Looks weights up by their official module name, through peft's wrapper when present."""

    def __init__(self, sd: dict[str, torch.Tensor], lora_alpha: float) -> None:
        self.sd, self.alpha = sd, lora_alpha

    def _find(self, name: str) -> str:
        candidates = [name]
        if name.startswith("vision_model.encoder."):
            rest = name[len("vision_model.encoder.") :]
            candidates.append("vision_model.encoder.base_model.model." + rest)
        for c in list(candidates):
            module, leaf = c.rsplit(".", 1)
            candidates.append(f"{module}.base_layer.{leaf}")
        for c in candidates:
            if c in self.sd:
                return c
        raise KeyError(name)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.sd[self._find(name)].float()

    def linear(self, x: torch.Tensor, module: str) -> torch.Tensor:
        out = x @ self[f"{module}.weight"].T + self[f"{module}.bias"]
        key = self._find(f"{module}.weight")
        lora_a = key.replace(".base_layer.weight", ".weight").replace(".weight", ".lora_A.default.weight")
        if lora_a in self.sd:  # peft's forward: base(x) + B(A(dropout(x))) * alpha / r
            a, b = self.sd[lora_a].float(), self.sd[lora_a.replace("lora_A", "lora_B")].float()
            out = out + (x @ a.T @ b.T) * (self.alpha / a.shape[0])
        return out

    def norm(self, x: torch.Tensor, module: str, eps: float) -> torch.Tensor:
        mu = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=False)
        return (x - mu) / torch.sqrt(var + eps) * self[f"{module}.weight"] + self[f"{module}.bias"]


def _act(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _attention(
    w: _Weights, x: torch.Tensor, module: str, heads: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    b, n, d = x.shape
    hd = d // heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, n, heads, hd).transpose(1, 2)

    q = split(w.linear(x, f"{module}.q_proj")) * hd**-0.5
    k, v = split(w.linear(x, f"{module}.k_proj")), split(w.linear(x, f"{module}.v_proj"))
    scores = q @ k.transpose(-1, -2)
    if mask is not None:
        scores = scores + mask
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
    return w.linear(out, f"{module}.out_proj")


def _block(
    w: _Weights, x: torch.Tensor, prefix: str, cfg: dict[str, Any], mask: torch.Tensor | None = None
) -> torch.Tensor:
    eps = cfg["layer_norm_eps"]
    x = x + _attention(
        w, w.norm(x, prefix + "layer_norm1", eps), prefix + "self_attn", cfg["num_attention_heads"], mask
    )
    h = _act(w.linear(w.norm(x, prefix + "layer_norm2", eps), prefix + "mlp.fc1"), cfg["hidden_act"])
    return x + w.linear(h, prefix + "mlp.fc2")


@torch.no_grad()
def reference_vision(
    sd: dict[str, torch.Tensor], config: dict[str, Any], pixels: torch.Tensor
) -> torch.Tensor:
    """The official ``get_image_features`` (unnormalised ``[B, projection_dim]``), eval mode."""
    v = config["vision_config"]
    w = _Weights(sd, v.get("lora_alpha", 16))
    pixels = pixels.float()
    if pixels.ndim == 5:
        b, _, t = pixels.shape[:3]
        flat = pixels.permute(0, 2, 1, 3, 4).reshape(b * t, *pixels.shape[1:2], *pixels.shape[3:])
    else:
        b, t, flat = pixels.shape[0], 1, pixels
    p = v["patch_size"]
    weight = w["vision_model.embeddings.patch_embedding.weight"]
    if weight.ndim == 5:  # V1.5: Conv3d over [b, c, t, h, w] with a tube of one frame
        patches = F.conv3d(pixels, weight, stride=(1, p, p))  # b d t gh gw
        patches = patches.permute(0, 2, 3, 4, 1).reshape(b * t, -1, weight.shape[0])
        cls = w["vision_model.embeddings.class_embedding"].repeat(b, 1)[:, None]  # (b t) 1 d
    else:
        patches = F.conv2d(flat, weight, stride=p).flatten(2).transpose(1, 2)
        cls = w["vision_model.embeddings.class_embedding"].expand(b * t, 1, -1)
    x = torch.cat([cls, patches], dim=1) + w["vision_model.embeddings.position_embedding.weight"]
    eps = v["layer_norm_eps"]
    x = w.norm(x, "vision_model.pre_layrnorm", eps)
    n, d = x.shape[1:]
    for i in range(v["num_hidden_layers"]):
        prefix = f"vision_model.encoder.layers.{i}."
        if v.get("add_time_attn"):
            tt = v["num_frames"]
            x = (x.view(-1, tt, n, d) + w[prefix + "temporal_embedding"][0][None, :, None]).view(-1, n, d)
            seq = x.view(-1, tt, n, d).transpose(1, 2).reshape(-1, tt, d)  # (b n) t d
            mixed = _attention(
                w,
                w.norm(seq, prefix + "temporal_layer_norm1", eps),
                prefix + "temporal_attn",
                v["num_attention_heads"],
            )
            x = x + mixed.view(-1, n, tt, d).transpose(1, 2).reshape(-1, n, d)
        x = _block(w, x, prefix, v)
    pooled = w.norm(x[:, 0], "vision_model.post_layernorm", eps).view(b, t, d).mean(1)
    return pooled @ w["visual_projection.weight"].T


@torch.no_grad()
def reference_text(
    sd: dict[str, torch.Tensor], config: dict[str, Any], input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The official ``get_text_features``: causal + padding mask, the EOT token found by argmax of the ids."""
    t = config["text_config"]
    w = _Weights(sd, 16)
    n = input_ids.shape[1]
    x = (
        w["text_model.embeddings.token_embedding.weight"][input_ids]
        + w["text_model.embeddings.position_embedding.weight"][:n]
    )
    big = torch.finfo(torch.float32).min
    causal = torch.triu(torch.full((n, n), big), diagonal=1)
    padding = (1.0 - attention_mask[:, None, None, :].float()) * big
    mask = causal[None, None] + padding
    for i in range(t["num_hidden_layers"]):
        x = _block(w, x, f"text_model.encoder.layers.{i}.", t, mask)
    x = w.norm(x, "text_model.final_layer_norm", t["layer_norm_eps"])
    pooled = x[torch.arange(x.shape[0]), input_ids.argmax(-1)]
    return pooled @ w["text_projection.weight"].T
