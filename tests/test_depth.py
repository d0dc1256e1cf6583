"""The depth stage: VIDAL's encoding (uint16 PNG, mm, clipped at 10 m), real transformers depth models
loaded from disk, relative models, unusual frames and bad checkpoints."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from contracts.backends import ModelLoadError
from contracts.config_io import ConfigError
from contracts.encodings import encode_depth_png
from pipeline.config import load_config
from stages.backends.batching import decode_image_tensor
from stages.backends.depth import build_tiny, save_tiny, tiny_config, tiny_processor
from stages.base import RunContext
from stages.depth import DepthStage, to_millimetres


def image(h: int, w: int, seed: int = 0, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 255, (h, w, channels) if channels > 1 else (h, w), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def make_stage(model: str, **overrides) -> DepthStage:
    cfg = load_config(
        None,
        [f"depth.model={model}", "depth.model_batch=4", *[f"depth.{k}={v}" for k, v in overrides.items()]],
    )
    return DepthStage(cfg.depth, RunContext(root="/tmp/unused"))


def run(stage: DepthStage, frames: dict[str, list[bytes]]) -> dict[str, dict]:
    table = pa.table({"video_id": list(frames), "frames": list(frames.values())})
    return {r["video_id"]: r for r in stage.process(table).to_pylist()}


def read_png(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.mode == "I;16"
    return np.asarray(img)


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory) -> dict[str, str]:
    """Tiny GLPN, DPT and Depth Anything models written with save_pretrained, as a user's local dirs."""
    root = tmp_path_factory.mktemp("depth_models")
    return {arch: str(save_tiny(root / arch, arch)) for arch in ("glpn", "dpt", "depth_anything")}


def test_png_encoding_is_lossless_16_bit():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (7, 13), (64, 96)]:
        mm = rng.integers(0, 10_001, shape, dtype=np.uint16)
        back = read_png(encode_depth_png(mm))
        assert back.dtype == np.uint16 and np.array_equal(back, mm)
    mm = np.full((4, 5), 65535, np.uint16)
    assert np.array_equal(read_png(encode_depth_png(mm, level=9)), mm)


def test_millimetres_are_clipped_to_ten_metres():
    metres = torch.tensor([[-1.0, 0.0014, 5.5, 9.9996, 12.0, float("nan")]])
    assert to_millimetres(metres, "metric").tolist() == [[0, 1, 5500, 10000, 10000, 0]]
    order = torch.tensor([[0.0, 0.25, 1.0]])
    assert to_millimetres(order, "relative").tolist() == [[0, 2500, 10000]]


def test_glpn_metric_depth_matches_the_model_in_millimetres(saved_models):
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    stage = make_stage(f"hf:{saved_models['glpn']}")
    stage.check()
    stage.setup()
    frames = [image(96, 170, i) for i in range(3)] + [image(71, 45, 5)]
    out = run(stage, {"v": frames})["v"]
    assert out["status"] == "ok" and out["depth_kind"] == "metric"
    assert out["depth_model"] == f"hf:{saved_models['glpn']}" and len(out["depth"]) == 4
    # the reference: transformers' own processor, model and post-processing on the same frame
    model = AutoModelForDepthEstimation.from_pretrained(saved_models["glpn"]).eval()
    processor = AutoImageProcessor.from_pretrained(saved_models["glpn"])
    for data, blob in zip(out["depth"], frames):
        rgb = decode_image_tensor(blob)
        with torch.inference_mode():
            pred = model(**processor(images=rgb, return_tensors="pt"))
        ref = processor.post_process_depth_estimation(pred, target_sizes=[tuple(rgb.shape[1:])])[0][
            "predicted_depth"
        ]
        mm = read_png(data)
        assert mm.shape == tuple(rgb.shape[1:])
        assert np.abs(mm.astype(np.int64) - (ref.numpy() * 1000).round()).max() <= 1


def test_depth_beyond_ten_metres_is_clipped(tmp_path):
    # A GLPN whose head scales its sigmoid to 40 m: random weights put most pixels near 20 m.
    config = tiny_config("glpn")
    config.max_depth = 40
    from transformers import AutoModelForDepthEstimation

    torch.manual_seed(0)
    AutoModelForDepthEstimation.from_config(config).save_pretrained(tmp_path)
    tiny_processor("glpn").save_pretrained(tmp_path)
    stage = make_stage(f"hf:{tmp_path}")
    stage.setup()
    mm = read_png(run(stage, {"v": [image(64, 64)]})["v"]["depth"][0])
    assert mm.max() == 10_000 and (mm == 10_000).mean() > 0.9


@pytest.mark.parametrize("arch", ["dpt", "depth_anything"])
def test_relative_models_are_normalised_and_marked(saved_models, arch):
    stage = make_stage(f"hf:{saved_models[arch]}")
    stage.setup()
    out = run(stage, {"v": [image(64, 100, i) for i in range(2)]})["v"]
    assert out["status"] == "ok" and out["depth_kind"] == "relative"
    for data in out["depth"]:
        mm = read_png(data)
        assert mm.shape == (64, 100) and mm.min() == 0 and mm.max() == 10_000


def test_unusual_frames_keep_their_size(saved_models):
    stage = make_stage("tiny")
    stage.setup()
    frames = {
        "odd": [image(1, 1, fmt="PNG"), image(37, 53), image(3000, 4000, fmt="JPEG")],
        "grey_rgba": [image(40, 60, mode="L"), image(30, 20, mode="RGBA", fmt="PNG")],
        "bad": [image(40, 60), b"\x89PNG\r\n\x1a\n truncated"],
    }
    out = run(stage, frames)
    assert [read_png(d).shape for d in out["odd"]["depth"]] == [(1, 1), (37, 53), (3000, 4000)]
    assert [read_png(d).shape for d in out["grey_rgba"]["depth"]] == [(40, 60), (30, 20)]
    assert out["bad"]["status"] == "failed" and out["bad"]["error"].startswith(
        "depth: frame 1: not a decodable"
    )
    assert out["odd"]["depth_model"] == "tiny"


class OutOfMemoryAbove(torch.nn.Module):
    """The real depth model, behind a simulated GPU memory limit (batch size and pixels per frame)."""

    def __init__(self, model: torch.nn.Module, max_batch: int, max_pixels: int):
        super().__init__()
        self.model, self.max_batch, self.max_pixels = model, max_batch, max_pixels
        self.sizes: list[int] = []

    def forward(self, pixel_values: torch.Tensor):
        self.sizes.append(len(pixel_values))
        if len(pixel_values) > self.max_batch or pixel_values[0, 0].numel() > self.max_pixels:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.model(pixel_values=pixel_values)


def test_out_of_memory_halves_the_batch_and_fails_only_what_never_fits():
    frames = {
        "a": [image(64, 96, i) for i in range(8)],
        "b": [image(64, 96, 10 + i) for i in range(8)],
        "big": [image(64, 96, 20), image(256, 384, 21)],
    }
    free = make_stage("tiny", model_batch=16)
    free.setup()
    expected = run(free, frames)
    limited = make_stage("tiny", model_batch=16)
    limited.setup()
    limited.net.model = OutOfMemoryAbove(limited.net.model, max_batch=4, max_pixels=64 * 96)
    out = run(limited, frames)
    assert out["a"]["status"] == out["b"]["status"] == "ok"
    assert out["a"]["depth"] == expected["a"]["depth"] and out["b"]["depth"] == expected["b"]["depth"]
    assert out["big"]["status"] == "failed"
    assert out["big"]["error"] == "depth: frame 1: depth model failed: out of memory even at batch size 1"
    assert limited.runner.caps[(3, 64, 96)] == 4 and max(limited.net.model.sizes) == 16


def test_tiny_models_are_the_same_on_every_actor():
    a, b = build_tiny("dpt"), build_tiny("dpt")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_bad_checkpoints_fail_at_stage_start(saved_models, tmp_path):
    missing = tmp_path / "absent"
    truncated = tmp_path / "truncated"
    shutil.copytree(saved_models["glpn"], truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "bert"}))
    for path, expected in [
        (missing, "directory not found"),
        (truncated, "unreadable or truncated"),
        (foreign, "model_type 'bert' is not a supported depth architecture"),
    ]:
        with pytest.raises(ModelLoadError, match=expected):
            make_stage(f"hf:{path}").check()
        with pytest.raises(ModelLoadError, match=expected):
            make_stage(f"hf:{path}").setup()


def test_weights_of_another_architecture_fail_listing_keys(saved_models, tmp_path):
    # a GLPN config with DPT weights: the config passes the driver check, the actor's load refuses
    shutil.copy(f"{saved_models['glpn']}/config.json", tmp_path / "config.json")
    shutil.copy(f"{saved_models['glpn']}/preprocessor_config.json", tmp_path / "preprocessor_config.json")
    shutil.copy(f"{saved_models['dpt']}/model.safetensors", tmp_path / "model.safetensors")
    stage = make_stage(f"hf:{tmp_path}")
    stage.check()
    with pytest.raises(ModelLoadError, match=r"do not fit a glpn model \(\d+ missing or mismatched, e.g. "):
        stage.setup()


def test_config_rejects_other_families_and_bad_values():
    with pytest.raises(ConfigError, match="depth.model"):
        load_config(None, ["depth.model=munit:/x.pt"])
    with pytest.raises(ConfigError, match="the tiny variants are tiny, tiny:glpn"):
        load_config(None, ["depth.model=tiny:resnet"])
    with pytest.raises(ConfigError, match="depth.png_compression"):
        load_config(None, ["depth.png_compression=12"])
    with pytest.raises(ConfigError, match="depth.depth_kind"):
        load_config(None, ["depth.depth_kind=absolute"])
