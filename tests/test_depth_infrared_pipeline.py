"""Depth and infrared through the real runner on local Ray, into WebDataset shards read back with
``webdataset``; and a bad checkpoint stopping the stage before any row."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import webdataset as wds
from PIL import Image

from contracts import manifest
from contracts import shard_format as fmt
from contracts.backends import ModelLoadError
from pipeline.config import load_config
from pipeline.runner import run_pipeline, run_stage
from tests.conftest import write_list

REPO = Path(__file__).resolve().parent.parent
STAGES = ["discover", "download", "probe", "depth", "infrared", "shard"]


def config_for(root: Path, inputs: Path, *extra: str):
    return load_config(
        REPO / "configs" / "demo.yaml",
        [
            f"run.root={root}",
            f"run.stages=[{', '.join(STAGES)}]",
            f"discover.inputs=[{inputs}]",
            "run.demo_media=",
            "shard.samples_per_shard=4",
            "probe.short_side=96",
            "depth.model=tiny",
            "depth.batch_size=3",
            "depth.model_batch=8",
            "infrared.model=tiny",
            "infrared.batch_size=3",
            "infrared.short_side=64",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ray_local, good_videos):
    d = tmp_path_factory.mktemp("vision_run")
    rows = [{"path": str(p), "title": p.stem, "hashtags": "#demo"} for p in good_videos[:5]]
    inputs = write_list(d / "videos.csv", rows)
    root = d / "root"
    reports = run_pipeline(config_for(root, inputs), STAGES)
    return root, inputs, {r.stage: r for r in reports}


@pytest.mark.slow
def test_shards_carry_depth_and_infrared_in_vidal_encodings(finished):
    root, _, reports = finished
    assert reports["depth"].counts["ok"] == 5 and reports["infrared"].counts["ok"] == 5
    assert reports["shard"].counts["ok"] == 5
    success = json.loads((root / "depth" / "_SUCCESS.json").read_text())
    assert success["models"] == {"depth": "tiny"}
    tars = sorted(str(p) for p in (root / "shard").glob("*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False, empty_check=False))
    assert len(samples) == 5
    for s in samples:
        rgb = [Image.open(io.BytesIO(b)) for b in fmt.frames_of(s, "rgb")]
        depth = [Image.open(io.BytesIO(b)) for b in fmt.frames_of(s, "depth")]
        ir = [Image.open(io.BytesIO(b)) for b in fmt.frames_of(s, "ir")]
        assert len(rgb) == len(depth) == len(ir) == fmt.NUM_FRAMES
        for r, dm, t in zip(rgb, depth, ir):
            assert dm.format == "PNG" and dm.mode == "I;16" and dm.size == r.size
            assert np.asarray(dm).dtype == np.uint16 and np.asarray(dm).max() <= fmt.DEPTH_MAX_MM
            assert t.format == "JPEG" and t.mode == "L" and t.size == r.size
        meta = json.loads(s["json"])
        assert meta["models"]["depth"] == "tiny" and meta["models"]["infrared"] == "tiny"
        assert meta["depth_kind"] == "metric"
    index = [r for t in tars for r in pq.read_table(t.removesuffix(".tar") + ".parquet").to_pylist()]
    assert len(index) == 5 and all(r["has_depth"] and r["has_ir"] for r in index)


@pytest.mark.slow
def test_bad_checkpoint_stops_the_stage_before_any_row(finished, tmp_path):
    root, inputs, _ = finished
    # checked on the driver: the stage does not start
    cfg = config_for(root, inputs, f"infrared.model=munit:{tmp_path / 'absent.pt'}")
    before = manifest.part_files(str(root), "infrared")
    assert before
    with pytest.raises(ModelLoadError, match="checkpoint not found"):
        run_stage(cfg, "infrared", mode="force")
    assert manifest.part_files(str(root), "infrared") == before  # --force deleted nothing: checked first
    # unchecked on the driver: the actor's setup fails the stage with the same reason, still no rows
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    cfg = config_for(root, inputs, f"infrared.model=munit:{truncated}", "infrared.check_on_driver=false")
    with pytest.raises(ray.exceptions.RayError, match="unreadable or truncated"):
        run_stage(cfg, "infrared", mode="force")
    assert manifest.part_files(str(root), "infrared") == []
