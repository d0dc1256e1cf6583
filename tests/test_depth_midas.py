"""``midas:<file.pt>``: the original MiDaS / DPT release files on timm backbones.

The release files are made here: random tensors under the key names and shapes of the network the
backend builds (``expected_layout``). Two references that do not come from that code keep it honest:
``fixtures/midas_release_keys.json.gz``, the names and shapes of the release's own ``DPTDepthModel``
(isl-org/MiDaS, built with timm 0.6.12 as its environment pins it), and transformers'
``DPTForDepthEstimation``, into which DPT-Large's weights map by the documented conversion.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from contracts import backends
from contracts.backends import ModelLoadError
from contracts.config_io import ConfigError
from pipeline.config import load_config
from stages.backends.midas import (
    DERIVED_BUFFERS,
    expected_layout,
    network_size,
    original_to_timm,
    resolve_variant,
    timm_to_original,
    variant_from_name,
)
from stages.backends.midas_dpt import VARIANTS
from tests.conftest import write_list
from tests.test_depth import image, make_stage, read_png, run

REPO = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
# "Params (M)" of the release's README table
RELEASE_PARAMS_M = {
    "dpt_beit_large_512": 345, "dpt_beit_large_384": 344, "dpt_swin2_large_384": 213,
    "dpt_swin2_tiny_256": 42, "dpt_levit_224": 51, "dpt_large_384": 344, "dpt_hybrid_384": 123,
    "dpt_beit_base_384": 112, "dpt_swin2_base_384": 102,
}  # fmt: skip


def random_release_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the release's names, scaled so activations stay of order one."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in expected_layout(VARIANTS[name]).items():
        if key.endswith("num_batches_tracked"):
            t = torch.zeros((), dtype=torch.long)
        elif key.endswith("running_var"):
            t = torch.rand(shape, generator=g) + 0.5
        elif len(shape) >= 2:
            t = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        elif key.endswith("weight") and ("norm" in key or ".bn." in key):
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            t = 0.05 * torch.randn(shape, generator=g)
        state[key] = t
    return state


@pytest.fixture(scope="module")
def release_file(tmp_path_factory):
    """``release_file(name)``: the path of a random release file of that variant, written once."""
    root = tmp_path_factory.mktemp("midas")
    made: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in made:
            state = random_release_state(name)
            if VARIANTS[name].family == "beit":  # the release files carry this derived buffer too
                from timm.models.beit import gen_relative_position_index

                side = VARIANTS[name].net_size // 16
                for i in range(24):
                    state[f"pretrained.model.blocks.{i}.attn.relative_position_index"] = (
                        gen_relative_position_index((side, side))
                    )
            made[name] = root / f"{name}.pt"
            torch.save(state, made[name])
        return made[name]

    return make


@pytest.fixture(scope="module")
def loaded(release_file):
    """``loaded(name)``: the backend's model of that variant's release file, loaded once."""
    nets: dict[str, object] = {}

    def load(name: str):
        if name not in nets:
            nets[name] = backends.load("depth", f"midas:{release_file(name)}", CPU, None)
        return nets[name]

    return load


# -- layouts, names, sizes (no weights) --------------------------------------------------------------
def test_layouts_are_the_release_layouts():
    reference = json.loads(gzip.decompress((REPO / "tests/fixtures/midas_release_keys.json.gz").read_bytes()))
    assert sorted(reference["variants"]) == sorted(VARIANTS)
    for name, keys in reference["variants"].items():
        variant = VARIANTS[name]
        release = {k: tuple(s) for k, s in keys.items() if not k.endswith(DERIVED_BUFFERS)}
        ours = {k: tuple(s) for k, s in expected_layout(variant).items()}
        assert ours == release, name
        for key in release:  # both directions of the renaming agree
            assert timm_to_original(variant, original_to_timm(variant, key)) == key
        derived = [k for k in keys if k.endswith(DERIVED_BUFFERS)]
        assert all(original_to_timm(variant, k) is None for k in derived)


def test_parameter_counts_are_the_release_figures():
    for name, millions in RELEASE_PARAMS_M.items():
        with torch.device("meta"):
            from stages.backends.midas_dpt import MidasDPT

            n = sum(p.numel() for p in MidasDPT(VARIANTS[name]).parameters())
        assert round(n / 1e6) == millions, name


def test_variant_comes_from_the_file_name_or_the_config():
    assert variant_from_name("/w/dpt_beit_large_512.pt") == "dpt_beit_large_512"
    assert variant_from_name("/w/dpt_large-midas-2f21e586.pt") == "dpt_large_384"  # the v3.0 name
    assert variant_from_name("/w/dpt_hybrid-midas-501f0c75.pt") == "dpt_hybrid_384"
    assert variant_from_name("/w/my_depth.pt") is None
    assert (
        resolve_variant(backends.parse("depth", "midas:/w/my_depth.pt"), "dpt_levit_224").name
        == "dpt_levit_224"
    )
    with pytest.raises(ConfigError, match="depth.midas_variant"):
        load_config(None, ["depth.model=midas:/w/my_depth.pt"])
    with pytest.raises(ConfigError, match="depth.midas_variant"):
        load_config(None, ["depth.model=midas:/w/my_depth.pt", "depth.midas_variant=dpt_huge"])
    cfg = load_config(None, ["depth.model=midas:/w/my_depth.pt", "depth.midas_variant=dpt_swin2_tiny_256"])
    assert cfg.depth.midas_variant == "dpt_swin2_tiny_256"


def test_network_size_follows_the_release_resize_rule():
    # "minimal": the side whose scale is nearer 1 decides; then each side to a multiple of 32
    assert network_size(VARIANTS["dpt_large_384"], 256, 455) == (224, 384)  # 216 rounds up to 224
    assert network_size(VARIANTS["dpt_large_384"], 480, 640) == (384, 512)
    assert network_size(VARIANTS["dpt_beit_large_512"], 256, 455) == (288, 512)
    assert network_size(VARIANTS["dpt_beit_large_512"], 1080, 1920) == (512, 896)  # downscaled least
    assert network_size(VARIANTS["dpt_swin2_tiny_256"], 256, 455) == (256, 256)  # square, as released
    assert network_size(VARIANTS["dpt_levit_224"], 90, 2000) == (224, 224)


# -- real-size release files -------------------------------------------------------------------------
LARGE = pytest.mark.slow  # 345 M parameters: about a minute each on two busy cores


@pytest.mark.parametrize(
    ("name", "size"),
    [
        pytest.param("dpt_large_384", (64, 96), marks=LARGE),
        pytest.param("dpt_beit_large_512", (64, 96), marks=LARGE),  # off its 32x32 window: bias resized
        ("dpt_swin2_tiny_256", (256, 256)),
    ],
)
def test_release_file_loads_strictly_and_predicts_deterministically(release_file, loaded, name, size):
    path = release_file(name)
    backends.check("depth", f"midas:{path}")  # the driver's check
    net = loaded(name)
    assert net.kind == "relative"
    state = torch.load(path, weights_only=True, mmap=True)
    loaded = net.model.state_dict()
    for key, tensor in state.items():
        if (ours := original_to_timm(net.variant, key)) is not None:
            assert torch.equal(loaded[ours], tensor), key
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    with torch.inference_mode():
        first, second = net.model(x), net.model(x)
    assert first.shape == (2, *size)  # the documented output: one map at the input's size
    assert torch.equal(first, second)
    assert torch.isfinite(first).all() and (first >= 0).all() and first.std() > 0
    assert not torch.equal(first[0], first[1])


def test_levit_predicts_through_the_stage(release_file):
    stage = make_stage(f"midas:{release_file('dpt_levit_224')}")
    stage.check()
    stage.setup()
    frames = {"a": [image(90, 160, seed=1), image(90, 160, seed=2)], "b": [image(64, 64, seed=3)]}
    rows = run(stage, frames)
    again = run(stage, frames)
    for vid, blobs in frames.items():
        assert rows[vid]["status"] == "ok" and rows[vid]["depth_kind"] == "relative"
        maps = [read_png(d) for d in rows[vid]["depth"]]
        assert [m.shape for m in maps] == [np.asarray(Image.open(io.BytesIO(b))).shape[:2] for b in blobs]
        assert all(m.min() == 0 and m.max() == 10000 for m in maps)  # normalised like every relative model
        assert rows[vid]["depth"] == again[vid]["depth"]


@LARGE
def test_transformers_dpt_large_gives_the_same_prediction(release_file, loaded):
    from transformers import DPTConfig, DPTForDepthEstimation

    path = release_file("dpt_large_384")
    ours = loaded("dpt_large_384").model
    config = DPTConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        backbone_out_indices=[5, 11, 17, 23], neck_hidden_sizes=[256, 512, 1024, 1024], image_size=384,
        layer_norm_eps=1e-6,  # timm's ViT; transformers' default is 1e-12
    )  # fmt: skip
    with torch.device("meta"):
        theirs = DPTForDepthEstimation(config)
    state = to_transformers(torch.load(path, weights_only=True, mmap=True), 1024)
    theirs.load_state_dict(state, strict=True, assign=True)
    theirs.eval()
    # square: transformers' DPT reassembles a ViT's tokens into a square grid
    x = torch.randn(1, 3, 192, 192, generator=torch.Generator().manual_seed(2)).clamp(-1, 1)
    with torch.inference_mode():
        a, b = ours(x), theirs(pixel_values=x).predicted_depth
    assert a.shape == b.shape == (1, 192, 192)
    assert a.abs().mean() > 0.1
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def to_transformers(state: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """DPT-Large release weights under transformers' names (the mapping its convert_dpt_to_pytorch.py uses)."""
    out = {}
    block = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
             "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}  # fmt: skip
    fusion = {"resConfUnit1": "residual_layer1", "resConfUnit2": "residual_layer2", "out_conv": "projection"}
    for key, t in state.items():
        parts = key.split(".")
        if key.startswith("pretrained.model.head."):
            continue  # the ImageNet classifier: no counterpart
        if key.startswith("pretrained.model.blocks."):
            i, rest = parts[3], ".".join(parts[4:])
            prefix = f"dpt.encoder.layer.{i}."
            if rest.startswith("attn.qkv."):
                kind = parts[-1]
                for j, name in enumerate(("query", "key", "value")):
                    out[f"{prefix}attention.attention.{name}.{kind}"] = t[j * width : (j + 1) * width]
                continue
            for old, new in block.items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old) :]
            out[prefix + rest] = t
        elif key.startswith("pretrained.model.norm."):
            out["dpt.layernorm." + parts[-1]] = t
        elif key.startswith("pretrained.model."):
            rest = key[len("pretrained.model.") :]
            rest = rest.replace("pos_embed", "position_embeddings").replace(
                "patch_embed.proj", "patch_embeddings.projection"
            )
            out["dpt.embeddings." + rest] = t
        elif key.startswith("pretrained.act_postprocess"):
            level = int(parts[1][-1]) - 1
            if parts[2] == "0":
                out[f"neck.reassemble_stage.readout_projects.{level}.0.{parts[-1]}"] = t
            else:
                what = {"3": "projection", "4": "resize"}[parts[2]]
                out[f"neck.reassemble_stage.layers.{level}.{what}.{parts[-1]}"] = t
        elif parts[1].startswith("layer") and parts[1].endswith("_rn"):
            out[f"neck.convs.{int(parts[1][5]) - 1}.{parts[-1]}"] = t
        elif parts[1].startswith("refinenet"):
            rest = ".".join(fusion.get(p, p) for p in parts[2:]).replace("conv1", "convolution1")
            rest = rest.replace("conv2", "convolution2")
            out[f"neck.fusion_stage.layers.{4 - int(parts[1][-1])}.{rest}"] = t
        elif parts[1] == "output_conv":
            out[f"head.head.{parts[2]}.{parts[3]}"] = t
        else:
            raise AssertionError(f"unmapped release key {key}")
    return out


# -- bad files ---------------------------------------------------------------------------------------
def test_bad_files_fail_on_the_driver_naming_what_is_wrong(release_file, tmp_path):
    good = release_file("dpt_levit_224")
    truncated = tmp_path / "dpt_levit_224.pt"
    truncated.write_bytes(good.read_bytes()[:100_000])
    state = torch.load(good, weights_only=True)
    dropped = tmp_path / "dropped_dpt_levit_224.pt"
    torch.save({k: v for k, v in state.items() if k != "scratch.refinenet1.out_conv.weight"}, dropped)
    reshaped = tmp_path / "reshaped_dpt_levit_224.pt"
    torch.save({**state, "scratch.layer1_rn.weight": torch.zeros(256, 384, 1, 1)}, reshaped)
    not_weights = tmp_path / "list_dpt_levit_224.pt"
    torch.save([1, 2, 3], not_weights)
    cases = [
        (f"midas:{tmp_path / 'absent_dpt_levit_224.pt'}", None, "file not found"),
        (f"midas:{truncated}", None, "dpt_levit_224.pt is unreadable or truncated"),
        (f"midas:{not_weights}", None, "is not a state dict of tensors"),
        (f"midas:{dropped}", None, r"1 missing \(e.g. scratch.refinenet1.out_conv.weight\)"),
        (f"midas:{reshaped}", None, r"with another shape \(e.g. scratch.layer1_rn.weight \(256, 384, 1, 1\)"),
        (f"midas:{good}", "dpt_swin2_tiny_256", r"not a MiDaS dpt_swin2_tiny_256 state dict: \d+ missing .*unexpected"),
    ]  # fmt: skip
    for spec, variant, expected in cases:
        overrides = {"midas_variant": variant} if variant else {}
        with pytest.raises(ModelLoadError, match=expected):
            make_stage(spec, **overrides).check()
        with pytest.raises(ModelLoadError, match=expected):
            make_stage(spec, **overrides).setup()


def test_cli_refuses_a_file_without_a_variant_before_any_work(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pipeline.run", "--config", "configs/demo.yaml", "--root", str(tmp_path / "run"),
         "--set", f"depth.model=midas:{tmp_path / 'weights.pt'}"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: invalid config") and "set depth.midas_variant" in r.stderr
    assert not (tmp_path / "run").exists()


# -- through the real pipeline -----------------------------------------------------------------------
def cli(root: Path, inputs: Path, model: str, *flags: str) -> subprocess.CompletedProcess:
    sets = [
        "run.stages=[discover, download, probe, depth]", f"discover.inputs=[{inputs}]", "run.demo_media=",
        "probe.num_frames=2", "probe.short_side=96", "depth.batch_size=2", "depth.model_batch=4",
        f"depth.model={model}",
    ]  # fmt: skip
    args = [
        sys.executable,
        "-m",
        "pipeline.run",
        "--config",
        "configs/demo.yaml",
        "--root",
        str(root),
        "--quiet",
    ]
    for s in sets:
        args += ["--set", s]
    return subprocess.run([*args, *flags], capture_output=True, text=True, cwd=REPO, timeout=540)


@pytest.mark.slow
def test_depth_stage_runs_a_release_file_through_the_pipeline(release_file, good_videos, tmp_path):
    inputs = write_list(tmp_path / "videos.csv", [{"path": str(p), "title": p.stem} for p in good_videos[:2]])
    root = tmp_path / "root"
    good = release_file("dpt_levit_224")  # the fastest variant on the CPU
    truncated = tmp_path / "dpt_levit_224.pt"
    truncated.write_bytes(good.read_bytes()[:50_000])

    bad = cli(root, inputs, f"midas:{truncated}")
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "unreadable or truncated" in bad.stderr.strip().splitlines()[-1]
    assert not list((root / "depth").glob("*.parquet"))  # stopped before any depth row

    assert list((root / "probe").glob("*.parquet"))  # the upstream stages ran

    ok = cli(root, inputs, f"midas:{good}", "--stage", "depth")
    assert ok.returncode == 0, ok.stderr[-2000:]
    rows = [r for part in sorted((root / "depth").glob("*.parquet")) for r in pq.read_table(part).to_pylist()]
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert {r["depth_kind"] for r in rows} == {"relative"}
    assert {r["depth_model"] for r in rows} == {f"midas:{good}"}
    for r in rows:
        assert len(r["depth"]) == 2 and read_png(r["depth"][0]).shape == (96, 128)
