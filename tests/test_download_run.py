"""Discover -> download -> probe through the real runner on local Ray, against the 127.0.0.1 server:
the end-to-end generic-extractor path, file:// URLs, duplicates, resume and --retry-failed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.runner import run_pipeline, run_stage
from tests.conftest import write_list
from tests.httpserver import make_media, serve

REPO = Path(__file__).resolve().parent.parent
STAGES = ["discover", "download", "probe"]


def rows_of(root: Path, stage: str) -> dict[str, dict]:
    return {r["video_id"]: r for r in pq.read_table(str(root / stage)).to_pylist()}


@pytest.fixture(scope="module")
def crawl(tmp_path_factory, ray_local):
    d = tmp_path_factory.mktemp("crawl")
    with serve(make_media(d)) as server:
        local = d / "local.mp4"
        local.write_bytes(server.files["b.mp4"])
        listed = [
            ("direct", server.url("/v/a.mp4")),
            ("page", server.url("/page/b")),  # yt-dlp's generic extractor finds the <video>
            ("file", local.as_uri()),
            (
                "flaky",
                server.url("/flaky/1/a.mp4?x=1"),
            ),  # fails once; retries are off: --retry-failed fixes it
            ("missing", server.url("/status/404/gone.mp4")),
            ("long", server.url("/v/long.mp4")),
            ("duplicate", server.url("/v/a.mp4#again")),  # the direct URL again, spelled differently
        ]
        inputs = write_list(d / "urls.csv", [{"url": u, "title": name} for name, u in listed])
        root = d / "root"
        cfg = load_config(
            REPO / "configs" / "demo.yaml",
            [
                f"run.root={root}",
                f"run.stages=[{', '.join(STAGES)}]",
                "run.demo_media=",
                f"discover.inputs=[{inputs}]",
                "download.allow_file_urls=true",
                "download.retries=0",
                "download.socket_timeout_s=5",
                "download.batch_size=4",
                "download.allow_private_addresses=true",  # the server is on 127.0.0.1
            ],
        )
        reports = run_pipeline(cfg, STAGES)
        yield root, cfg, reports, server


def by_title(root: Path) -> dict[str, dict]:
    discover = rows_of(root, "discover")
    download = rows_of(root, "download")
    return {r["title"]: download.get(vid) for vid, r in discover.items()}


def test_every_url_ends_with_a_status(crawl):
    root, _, reports, server = crawl
    got = by_title(root)
    assert sorted(got) == ["direct", "file", "flaky", "long", "missing", "page"]  # the duplicate is one video
    assert reports[0].rows_in == 6
    assert len(server.hits("/v/a.mp4")) == 1, "the duplicate was not fetched twice"
    assert (got["direct"]["status"], got["direct"]["downloader"]) == ("ok", "http")
    assert (got["page"]["status"], got["page"]["downloader"]) == ("ok", "yt-dlp")
    assert (got["file"]["status"], got["file"]["downloader"]) == ("ok", "yt-dlp")
    assert got["flaky"]["status"] == "failed" and "HTTP 500" in got["flaky"]["error"]
    assert got["missing"]["status"] == "failed" and got["missing"]["error"] == "HTTP 404 Not Found"
    assert got["long"]["status"] == "filtered" and "known after download" in got["long"]["error"]


def test_probe_reads_the_downloaded_media(crawl):
    root, *_ = crawl
    download, probe = rows_of(root, "download"), rows_of(root, "probe")
    ok = {v for v, r in download.items() if r["status"] == "ok"}
    assert set(probe) == ok and all(r["status"] == "ok" for r in probe.values())
    assert all(len(r["frames"]) == 8 and r["duration"] == pytest.approx(1.0, abs=0.2) for r in probe.values())
    for v in ok:
        assert download[v]["media"] == str(root / "media" / f"{v}.mp4") and os.path.exists(
            download[v]["media"]
        )
    success = json.loads((root / "download" / "_SUCCESS.json").read_text())
    assert success["totals"] == {"ok": 3, "failed": 2, "filtered": 1}


def test_rerun_skips_done_rows_and_retry_failed_redoes_only_failures(crawl):
    root, cfg, _, server = crawl
    hits = len(server.log)
    again = run_stage(cfg, "download")
    assert again.rows_in == 0 and again.skipped == 6 and len(server.log) == hits
    retry = run_stage(cfg, "download", mode="retry_failed")
    assert retry.rows_in == 2  # the flaky one now answers; the 404 is still gone
    got = by_title(root)
    assert got["flaky"]["status"] == "ok" and got["missing"]["status"] == "failed"
    assert got["direct"]["status"] == "ok" and len(server.hits("/v/a.mp4")) == 1
    assert len(rows_of(root, "download")) == 6


@pytest.mark.slow
def test_the_demo_goes_through_ytdlp_with_file_urls(tmp_path):
    """The embedded default: demo clips listed as file:// URLs, discovered and fetched by yt-dlp."""
    import subprocess
    import sys

    root, media = tmp_path / "root", tmp_path / "demo-media"
    cmd = [
        sys.executable,
        "-m",
        "pipeline.run",
        "--config",
        "configs/demo.yaml",
        "--root",
        str(root),
        "--until",
        "download",
        "--quiet",
        "--set",
        "download.allow_file_urls=true",
        "--set",
        f"run.demo_media.dir={media}",
        "--set",
        "run.demo_media.seconds=0.5",
        "--set",
        "run.demo_media.size=[64, 48]",
        "--set",
        "run.demo_media.per_concept=1",
        "--set",
        "run.ray_address=local",
        "--set",
        "run.num_cpus=2",
    ]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    discover, download = rows_of(root, "discover"), rows_of(root, "download")
    # 72 concepts, the 4 long videos of demo_media.long_videos (for the clip stage) and its 3 copies (score.dedup)
    assert len(download) == 72 + 4 + 3 and all(r["url"].startswith("file://") for r in discover.values())
    assert {(r["status"], r["downloader"]) for r in download.values()} == {("ok", "yt-dlp")}
