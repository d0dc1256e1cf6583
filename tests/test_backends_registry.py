"""The model-backend registry (contracts.backends): one parse, one check, one load, one error shape."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from contracts import backends
from contracts.backends import ModelLoadError, ModelSpec

CALLS: list[tuple] = []


def _check_file(spec: ModelSpec, *, must_exist: bool = True, **_) -> None:
    if must_exist and spec.name == "missing.pt":
        raise spec.error("file not found: missing.pt")


@backends.register("toy", "file", usage="file:<path.pt>", check=_check_file)
def _load_file(spec: ModelSpec, device: torch.device, dtype: torch.dtype | None, *, scale: int = 1, **_):
    CALLS.append((spec, device, dtype, scale))
    return ("file", spec.name, scale)


@backends.register("toy", "tiny", usage="tiny[:small|big]", variants=("small", "big"))
def _load_tiny(spec: ModelSpec, device: torch.device, dtype: torch.dtype | None, **_):
    return ("tiny", spec.name)


@backends.register("toy_text", "hf", usage="hf:<hub id or dir> (or a bare id)", bare=True)
def _load_text(spec: ModelSpec, device: torch.device, dtype: torch.dtype | None, **_):
    return ("hf", spec.name)


def test_parse_splits_family_and_name_once():
    assert backends.parse("toy", "file:/a/b:c.pt") == ModelSpec("toy", "file", "/a/b:c.pt", "file:/a/b:c.pt")
    assert backends.parse("toy", " tiny ").name == "small"  # the first variant is the default
    assert backends.parse("toy", "tiny:").name == "small"
    assert backends.parse("toy", "tiny:big").name == "big"
    assert str(backends.parse("toy", "tiny:big")) == "tiny:big"


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            "onnx:model.onnx",
            "toy model 'onnx:model.onnx': unknown family 'onnx'; known: file:<path.pt>, tiny",
        ),
        ("model.pt", "toy model 'model.pt': expected family:name, e.g. hf:model.pt; known: file:<path.pt>"),
        ("", "toy model '': empty name; expected one of file:<path.pt>, tiny[:small|big]"),
        ("file:", "toy model 'file:': file: needs a name; expected file:<path.pt>"),
        ("tiny:huge", "toy model 'tiny:huge': the tiny variants are tiny, tiny:small, tiny:big"),
    ],
)
def test_one_error_shape_names_kind_spec_and_families(spec, message):
    with pytest.raises(ModelLoadError) as e:
        backends.parse("toy", spec)
    assert str(e.value).startswith(message)


def test_bare_names_belong_to_the_family_marked_bare():
    assert backends.parse("toy_text", "openai/clip-vit-base-patch32").family == "hf"
    assert backends.parse("toy_text", "hf:minilm").name == "minilm"


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(ModelLoadError, match=r"no backends of kind 'nope' \(kinds: .*depth.*toy"):
        backends.parse("nope", "tiny")


def test_check_validates_device_precision_and_runs_the_family_checker():
    assert backends.check("toy", "file:ok.pt", device="cuda:1", precision="bf16").name == "ok.pt"
    with pytest.raises(ModelLoadError, match="toy model 'file:missing.pt': file not found"):
        backends.check("toy", "file:missing.pt")
    backends.check("toy", "file:missing.pt", must_exist=False)  # options reach the checker
    with pytest.raises(ValueError, match=r"precision 'fp7': expected one of auto, bf16, fp16, fp32"):
        backends.check("toy", "file:ok.pt", precision="fp7")
    with pytest.raises(ValueError, match="device 'gpu0'"):
        backends.check("toy", "file:ok.pt", device="gpu0")


def test_load_resolves_device_and_dtype_and_passes_options():
    CALLS.clear()
    assert backends.load("toy", "file:w.pt", "cpu", "fp32", scale=3) == ("file", "w.pt", 3)
    assert CALLS[-1][1:] == (torch.device("cpu"), None, 3)
    backends.load("toy", "file:w.pt", torch.device("cpu"), "bf16")
    assert CALLS[-1][2] is torch.bfloat16
    backends.load("toy", "file:w.pt", "auto", torch.float16)  # a torch dtype passes through
    assert CALLS[-1][2] is torch.float16
    assert backends.load("toy", "tiny") == ("tiny", "small")


def test_resolve_dtype_auto_is_fp32_on_cpu():
    cpu = torch.device("cpu")
    assert backends.resolve_dtype(cpu, "auto") is None and backends.resolve_dtype(cpu, "fp32") is None
    assert backends.resolve_dtype(cpu, "fp16") is torch.float16


def test_the_floor_imports_no_stage_model_or_torch():
    code = (
        "import sys, contracts.backends as b; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('stages', 'model', 'pipeline', 'torch')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    "override, words",
    [
        (
            "caption.precision=fp7",
            "caption.precision: Value error, precision 'fp7': expected one of auto, bf16",
        ),
        ("enhance.precision=fp7", "enhance.precision: Value error, precision 'fp7'"),
    ],
)
def test_bad_model_settings_exit_2_with_one_line_before_any_work(tmp_path, override, words):
    """Config time, on the driver: exit 2 and one problem line naming the dotted key; no Ray, no demo
    media, no root (the CLI's config-error shape: ``error: invalid config:`` then one line per problem)."""
    from tests.test_cli_errors import run_cli

    res = run_cli(tmp_path, "--root", str(tmp_path / "root"), "--set", override)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr[-2000:]
    assert lines[0] == "error: invalid config:" and len(lines) == 2 and words in lines[1], res.stderr
    assert res.stdout == ""
    assert not (tmp_path / "ray").exists() and not (tmp_path / "demo-media").exists()
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize(
    "override, words",
    [
        ("asr.device=gpu0", "asr.device: Value error, device 'gpu0'"),
        ("depth.precision=half", "depth.precision: Value error, precision 'half'"),
        (
            "depth.model=onnx:x.onnx",
            "depth.model: Value error, depth model 'onnx:x.onnx': unknown family 'onnx'",
        ),
        (
            "infrared.model=tiny:pix2pix",
            "infrared model 'tiny:pix2pix': the tiny variants are tiny, tiny:munit",
        ),
        (
            "caption.video_model=tiny:qwen",
            "video_caption model 'tiny:qwen': the tiny variants are tiny, tiny:llava",
        ),
        ("caption.frame_model=none", "frame_caption model 'none': expected family:name"),
        ("enhance.model=whisper:small", "llm model 'whisper:small': unknown family 'whisper'; known: "),
        ("asr.model=tiny:llama", "asr model 'tiny:llama': the tiny variants are tiny, tiny:whisper"),
    ],
)
def test_every_model_stage_config_parses_its_model_through_the_registry(override, words):
    from contracts.config_io import ConfigError
    from pipeline.config import load_config

    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert words in str(e.value)


def test_every_model_stage_kind_is_registered():
    kinds = {
        "depth": {"hf", "midas", "tiny"},
        "infrared": {"munit", "cyclegan", "tiny"},
        "asr": {"whisper", "tiny"},
        "frame_caption": {"hf", "tiny"},
        "video_caption": {"hf", "tiny"},
        "llm": {"openai", "hf", "tiny"},
        "text": {"hf", "tiny"},
    }
    for kind, expected in kinds.items():
        assert set(backends.families(kind)) == expected, kind
    assert backends.parse("text", "minilm") == ModelSpec("text", "hf", "minilm", "minilm")
