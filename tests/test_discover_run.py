"""Discover through the real runner on local Ray: lists, VIDAL-10M and search together, run-wide dedup,
resume across runs, and the search path's failure row."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.runner import run_stage
from tests.conftest import write_list
from tests.httpserver import unused_port

REPO = Path(__file__).resolve().parent.parent


def config_for(root: Path, *extra: str):
    return load_config(
        REPO / "configs" / "demo.yaml",
        [
            f"run.root={root}",
            "run.stages=[discover]",
            "run.demo_media=",
            "run.rows_per_part=4",
            "discover.batch_size=4",
            *extra,
        ],
    )


def manifest_rows(root: Path) -> list[dict]:
    return pq.read_table(str(root / "discover")).to_pylist()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("discover_inputs")
    first = write_list(
        d / "first.csv",
        [
            {"url": "https://www.youtube.com/watch?v=ImkVYKWqlDU", "title": "scuba divers roll off a boat"},
            {"url": "http://example.com/clips/cat.mp4?utm_source=feed", "title": "a cat jumps on a table"},
            {"url": "not a url", "title": "broken row"},
            *[{"url": f"http://example.com/clips/{i}.mp4", "title": f"clip number {i}"} for i in range(6)],
        ],
    )
    second = d / "second.jsonl"
    second.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"url": "https://youtu.be/ImkVYKWqlDU", "title": "same scuba video, short link"},
                {"url": "http://EXAMPLE.com/clips/cat.mp4", "title": "same cat, other spelling"},
                {
                    "url": "http://example.com/clips/dog.mp4",
                    "title": "a dog shakes off water",
                    "hashtags": ["dog"],
                },
            ]
        )
        + "\n"
    )
    vidal = d / "vidal10m.json"
    vidal.write_text(
        json.dumps(
            {
                "ImkVYKWqlDU": {
                    "folder": "coco_vat_9",
                    "raw": "WHY SCUBA DIVERS ROLL BACKWARDS OFF BOAT #shorts",
                    "mplug": "divers",
                    "polish_mplug": "scuba divers roll",
                    "ofa": ["a boat"] * 8,
                    "sound_mplug": "splashing",
                },
                "Xy_9-zQwErT": {
                    "folder": "coco_vat_1",
                    "raw": "Cat meets a cucumber #cat",
                    "mplug": "a cat",
                    "polish_mplug": "a cat jumps",
                    "ofa": [f"cat {i}" for i in range(8)],
                    "sound_mplug": "hiss",
                },
            }
        )
    )
    third = write_list(
        d / "third.csv",
        [
            {"url": "https://www.youtube.com/shorts/Xy_9-zQwErT", "title": "cucumber cat again"},
            {"url": "http://example.com/clips/new.mp4", "title": "a brand new clip"},
        ],
    )
    return {"first": first, "second": second, "vidal": vidal, "third": third}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, ray_local, inputs):
    root = tmp_path_factory.mktemp("discover_run") / "root"
    proxy = f"http://127.0.0.1:{unused_port()}"  # refuses connections: the search fails fast, offline
    cfg = config_for(
        root,
        f"discover.inputs=[{inputs['first']}, {inputs['second']}]",
        f"discover.vidal10m=[{inputs['vidal']}]",
        "discover.terms=[kettle boiling]",
        "discover.extractor_retries=0",
        f"discover.ytdlp_options={{proxy: '{proxy}'}}",
    )
    report = run_stage(cfg, "discover")
    return root, cfg, report


def test_all_three_inputs_in_one_run_with_run_wide_dedup(first_run):
    root, _, report = first_run
    rows = manifest_rows(root)
    ids = [r["video_id"] for r in rows]
    assert len(ids) == len(set(ids)), "every video once"
    by_id = {r["video_id"]: r for r in rows}
    # 9 + 3 list rows, 2 VIDAL entries, 1 search: the scuba video three times, the cat twice
    assert report.rows_in == 15 - 3
    assert {"youtube-ImkVYKWqlDU", "youtube-Xy_9-zQwErT"} <= set(by_id)
    cucumber = by_id["youtube-Xy_9-zQwErT"]
    assert cucumber["source"] == "vidal10m" and cucumber["polish_mplug"] == "a cat jumps"
    assert (
        cucumber["ofa"] == [f"cat {i}" for i in range(8)] and cucumber["raw"] == "Cat meets a cucumber #cat"
    )
    assert cucumber["url"] == "https://www.youtube.com/watch?v=Xy_9-zQwErT" and cucumber["status"] == "ok"
    success = json.loads((root / "discover" / "_SUCCESS.json").read_text())
    assert success["duplicates_dropped"] == 3
    assert success["search_queries"] == 1


def test_bad_rows_fail_with_a_reason(first_run):
    root, *_ = first_run
    rows = {r["title"]: r for r in manifest_rows(root) if r["title"]}
    assert rows["broken row"]["status"] == "failed" and "malformed URL" in rows["broken row"]["error"]
    search = [r for r in manifest_rows(root) if r["source"] == "search"]
    assert len(search) == 1 and search[0]["status"] == "failed"
    assert search[0]["query"] == "ytsearch20:kettle boiling" and search[0]["error"].startswith(
        "search failed"
    )


def test_a_rerun_adds_only_new_videos_and_does_not_search_again(first_run, inputs):
    root, cfg, _ = first_run
    before = len(manifest_rows(root))
    cfg.discover.inputs = [str(inputs["third"]), str(inputs["first"])]
    report = run_stage(cfg, "discover")
    assert report.rows_in == 1  # new.mp4; the cucumber and every 'first' row are done already
    rows = manifest_rows(root)
    assert len(rows) == before + 1 and len({r["video_id"] for r in rows}) == len(rows)
    success = json.loads((root / "discover" / "_SUCCESS.json").read_text())
    assert success["search_queries_already_done"] == 1
    retry = run_stage(cfg, "discover", mode="retry_failed")
    # the failed search and the malformed row are redone (and fail again, offline)
    assert retry.rows_in == 2 and retry.counts["failed"] == 2


@pytest.mark.slow
def test_the_cli_takes_all_three_inputs(tmp_path, inputs):
    """``python -m pipeline.run`` with --input, VIDAL-10M and search terms together (the search fails
    offline, as a row)."""
    import subprocess
    import sys

    root = tmp_path / "root"
    proxy = f"http://127.0.0.1:{unused_port()}"
    cmd = [
        sys.executable,
        "-m",
        "pipeline.run",
        "--config",
        "configs/demo.yaml",
        "--root",
        str(root),
        "--until",
        "discover",
        "--input",
        str(inputs["first"]),
        "--quiet",
        "--set",
        f"discover.vidal10m=[{inputs['vidal']}]",
        "--set",
        "discover.terms=[kettle boiling]",
        "--set",
        "discover.extractor_retries=0",
        "--set",
        f"discover.ytdlp_options={{proxy: '{proxy}'}}",
        "--set",
        "run.ray_address=local",
        "--set",
        "run.num_cpus=2",
    ]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    sources = {r["source"] for r in manifest_rows(root)}
    assert sources == {"urls", "vidal10m", "search"}
    assert "discover" in res.stdout and "rows failed" in res.stdout


def test_force_and_retry_failed_search_again(tmp_path, ray_local):
    """Which terms are done is decided after --force / --retry-failed changed the manifest, not before."""
    proxy = f"http://127.0.0.1:{unused_port()}"
    cfg = config_for(
        tmp_path / "root",
        "discover.terms=[kettle boiling]",
        "discover.extractor_retries=0",
        f"discover.ytdlp_options={{proxy: '{proxy}'}}",
    )
    assert run_stage(cfg, "discover").rows_in == 1
    assert run_stage(cfg, "discover").rows_in == 0  # resume: searched already (and failed)
    assert run_stage(cfg, "discover", mode="retry_failed").rows_in == 1
    forced = run_stage(cfg, "discover", mode="force")
    assert forced.rows_in == 1 and [r["query"] for r in manifest_rows(tmp_path / "root")] == [
        "ytsearch20:kettle boiling"
    ]
