"""The language stages in a whole run on a real local Ray instance, with tiny models offline:
discover -> download -> probe -> caption -> asr -> enhance -> shard, then enhance again through the
``openai:`` backend from Ray actors against a chat-completions server on 127.0.0.1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from contracts import manifest
from contracts import shard_format as fmt
from pipeline.config import load_config
from pipeline.runner import run_pipeline, run_stage
from tests.conftest import write_list
from tests.test_llm_openai import ChatServer

REPO = Path(__file__).resolve().parent.parent
STAGES = ["discover", "download", "probe", "caption", "asr", "enhance", "shard"]
TINY = [
    "caption.frame_model=tiny",
    "caption.video_model=tiny",
    "caption.frame_max_new_tokens=6",
    "caption.video_max_new_tokens=6",
    "caption.batch_size=4",
    "asr.model=tiny",
    "asr.max_new_tokens=6",
    "asr.batch_size=4",
    "enhance.model=tiny",
    "enhance.response_format=text",
    "enhance.max_new_tokens=12",
    "enhance.batch_size=4",
]


def config_for(root: Path, inputs: Path, *extra: str):
    return load_config(
        REPO / "configs" / "demo.yaml",
        [
            f"run.root={root}",
            f"run.stages=[{', '.join(STAGES)}]",
            f"discover.inputs=[{inputs}]",
            "run.demo_media=",
            "shard.samples_per_shard=4",
            "run.rows_per_part=4",
            *TINY,
            *extra,
        ],
    )


def ok_rows(root: Path, stage: str) -> dict[str, dict]:
    rows = pq.read_table(str(root / stage)).to_pylist() if manifest.part_files(str(root), stage) else []
    return {r["video_id"]: r for r in rows if r["status"] == "ok"}


@pytest.fixture(scope="module")
def language_run(tmp_path_factory, ray_local, good_videos, bad_inputs):
    d = tmp_path_factory.mktemp("lang")
    rows = [
        {"path": str(p), "title": f"clip {p.stem} #demo", "hashtags": "#demo #shapes"}
        for p in good_videos[:3]
    ]
    rows.append({"path": str(bad_inputs["no_audio"]), "title": "a silent clip", "hashtags": ""})
    inputs = write_list(d / "videos.csv", rows)
    root = d / "root"
    reports = run_pipeline(config_for(root, inputs), STAGES)
    return root, inputs, {r.stage: r for r in reports}


@pytest.mark.slow
def test_language_stages_write_their_columns(language_run):
    root, _, reports = language_run
    probe = ok_rows(root, "probe")
    assert len(probe) == 4
    for stage in ("caption", "asr", "enhance"):
        assert reports[stage].counts == {"ok": 4, "failed": 0, "filtered": 0}, stage
        assert set(ok_rows(root, stage)) == set(probe)
    for r in ok_rows(root, "caption").values():
        assert len(r["ofa"]) == 8 and r["mplug"] is not None
        assert r["caption_model"] == "ofa=tiny:blip-random;mplug=tiny:llava-random"
    asr = ok_rows(root, "asr")
    silent = [v for v, r in probe.items() if not r["has_audio"]]
    assert len(silent) == 1 and asr[silent[0]]["asr"] is None
    assert all(
        r["asr"] is not None and r["asr_model"] == "tiny:whisper-random"
        for v, r in asr.items()
        if v not in silent
    )
    for r in ok_rows(root, "enhance").values():
        assert (
            r["enhance_model"] == "tiny:llama-random" and r["enhance_prompt_version"] == "polish.v1+sound.v1"
        )
    success = json.loads((root / "enhance" / "_SUCCESS.json").read_text())
    usage = success["llm_usage"]
    assert usage["requests"] >= 8 and usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert success["models"] == {"enhance": "tiny"}


@pytest.mark.slow
def test_shards_carry_the_texts_and_models(language_run):
    root, *_ = language_run
    caption, asr, enhance = ok_rows(root, "caption"), ok_rows(root, "asr"), ok_rows(root, "enhance")
    seen = 0
    for sample in wds.WebDataset(
        [str(t) for t in sorted((root / "shard").glob("*.tar"))], shardshuffle=False
    ):
        meta = json.loads(sample[fmt.JSON_KEY])
        key = sample["__key__"]
        assert meta["ofa"] == caption[key]["ofa"] and meta["mplug"] == caption[key]["mplug"]
        assert meta["asr"] == asr[key]["asr"] and meta["polish_mplug"] == enhance[key]["polish_mplug"]
        assert meta["sound_mplug"] == enhance[key]["sound_mplug"]
        assert meta["models"]["caption"].startswith("ofa=tiny:") and meta["models"]["enhance"].startswith(
            "tiny:"
        )
        assert meta["models"].get("asr") == asr[key]["asr_model"]
        seen += 1
    assert seen == 4


@pytest.mark.slow
def test_enhance_through_an_openai_endpoint_from_ray_actors(language_run):
    root, inputs, _ = language_run
    server = ChatServer()
    try:
        cfg = config_for(
            root,
            inputs,
            "enhance.model=openai:served-model",
            "enhance.response_format=json",
            f"enhance.base_url={server.base_url}",
            "enhance.api_key_env=",
            "enhance.backoff_s=0.01",
            "enhance.concurrency=2",
        )
        server.script.append(("status", 503, "warming up"))  # the first request is retried
        report = run_stage(cfg, "enhance", mode="force")
    finally:
        server.close()
    assert report.counts == {"ok": 4, "failed": 0, "filtered": 0}
    assert len(server.requests) == 5 and server.max_inflight <= 2
    rows = ok_rows(root, "enhance")
    assert all(
        r["enhance_model"] == "openai:served-model" and r["enhance_note"] is None for r in rows.values()
    )
    assert all(r["polish_mplug"].startswith("A red ball number") for r in rows.values())
    usage = json.loads((root / "enhance" / "_SUCCESS.json").read_text())["llm_usage"]
    assert usage["requests"] == 5 and usage["prompt_tokens"] == 400
