"""Download's media files are safe to repeat: a worker killed (SIGKILL) mid-write leaves only a temp name
that nothing trusts, the next start removes it, and the retried download publishes the same name,
``{video_id}.{ext}``, once. A real kill of a real download process, on both download paths."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from stages.base import RunContext
from stages.download import DownloadConfig, DownloadStage
from tests.httpserver import make_media, serve

REPO = Path(__file__).resolve().parent.parent
WORKER = """
import sys
import pyarrow as pa
from stages.base import RunContext
from stages.download import DownloadConfig, DownloadStage
root, url, route = sys.argv[1:4]
stage = DownloadStage(DownloadConfig(route=route, retries=0, max_download_s=600, allow_private_addresses=True),
                      RunContext(root=root))
stage.setup()
stage.process(pa.Table.from_pylist([{"video_id": "killed", "url": url, "path": None}]))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve(make_media(tmp_path_factory.mktemp("served"))) as s:
        yield s


def written(media: Path) -> list[Path]:
    return [p for p in media.rglob("*") if p.is_file() and p.stat().st_size > 0] if media.exists() else []


@pytest.mark.parametrize("route", ["auto", "yt-dlp"])
def test_a_download_killed_mid_write_leaves_nothing_trusted_and_redoes_cleanly(server, tmp_path, route):
    root = tmp_path / "root"
    media = root / "media"
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(root), server.url("/drip/a.mp4"), route],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not written(media) and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the worker and anything it started (ffmpeg)
    proc.wait()
    partial = written(media)
    assert partial, f"the kill must land mid-write: {proc.stderr.read().decode()[-2000:]}"
    assert all(p.relative_to(media).parts[0].startswith(".tmp-") for p in partial), partial
    assert not (media / "killed.mp4").exists()

    stage = DownloadStage(
        DownloadConfig(route=route, retries=0, allow_private_addresses=True), RunContext(root=str(root))
    )
    stage.prepare()  # the driver's start: temp names of killed writers go
    stage.setup()
    row = pa.Table.from_pylist([{"video_id": "killed", "url": server.url("/v/a.mp4"), "path": None}])
    (out,) = stage.process(row).to_pylist()
    assert out["status"] == "ok" and out["media"] == str(media / "killed.mp4")
    assert sorted(os.listdir(media)) == ["killed.mp4"]
    assert out["sha256"] == hashlib.sha256(server.files["a.mp4"]).hexdigest()
    (again,) = stage.process(row).to_pylist()  # a retried task: same file, not fetched again
    assert (again["downloader"], again["sha256"]) == ("existing", out["sha256"])
    assert sorted(os.listdir(media)) == ["killed.mp4"]
