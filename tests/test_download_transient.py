"""A full disk is the machine's failure, not the video's: the row's error starts with "transient: " (the
runner redoes such rows on a plain rerun), nothing half-written is left, and once space is freed the same
download succeeds. On a real, small tmpfs (needs root; skipped otherwise), both download paths, and once
through the runner on real Ray: a plain rerun after freeing space completes the row."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pyarrow as pa
import pytest

from contracts.status import TRANSIENT
from stages.base import RunContext
from stages.download import DownloadConfig, DownloadStage
from tests.httpserver import make_media, serve


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve(make_media(tmp_path_factory.mktemp("served"))) as s:
        yield s


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk) -> None:
    """Write a filler file, a page at a time and unbuffered, until the disk is full."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError as e:
        assert e.errno == 28
    finally:
        os.close(fd)


@pytest.mark.parametrize("route", ["auto", "yt-dlp"])
def test_a_full_disk_is_transient_and_the_download_works_once_space_is_freed(server, small_disk, route):
    root = small_disk / "root"
    stage = DownloadStage(
        DownloadConfig(route=route, retries=0, socket_timeout_s=5.0, allow_private_addresses=True),
        RunContext(root=str(root)),
    )
    stage.setup()
    row = pa.Table.from_pylist([{"video_id": "full-disk", "url": server.url("/v/a.mp4"), "path": None}])
    fill(small_disk)
    (out,) = stage.process(row).to_pylist()
    assert out["status"] == "failed" and out["error"].startswith(f"{TRANSIENT}no space left on device"), out
    assert os.listdir(root / "media") == [], "nothing half-written is left"
    (small_disk / "filler").unlink()
    (again,) = stage.process(row).to_pylist()
    assert again["status"] == "ok", again
    assert again["sha256"] == hashlib.sha256(server.files["a.mp4"]).hexdigest()
    assert os.listdir(root / "media") == ["full-disk.mp4"]


def test_a_read_only_media_disk_is_transient_too(server, small_disk):
    root = small_disk / "root"
    stage = DownloadStage(
        DownloadConfig(retries=0, socket_timeout_s=5.0, allow_private_addresses=True),
        RunContext(root=str(root)),
    )
    stage.setup()
    row = pa.Table.from_pylist([{"video_id": "read-only", "url": server.url("/v/b.mp4"), "path": None}])
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        (out,) = stage.process(row).to_pylist()
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert (out["status"], out["error"]) == (
        "failed",
        f"{TRANSIENT}read-only file system while writing the download",
    )
    (again,) = stage.process(row).to_pylist()
    assert again["status"] == "ok" and os.listdir(root / "media") == ["read-only.mp4"]


@pytest.mark.slow
def test_a_plain_rerun_after_freeing_space_completes_the_row(small_disk, tmp_path, ray_local):
    import pyarrow.parquet as pq

    from pipeline.config import load_config
    from pipeline.runner import run_stage
    from pipeline.synthetic import CONCEPTS, make_clip
    from tests.conftest import write_list

    make_clip(
        clip := tmp_path / "clip.mp4", CONCEPTS[3], seconds=4.0, fps=24, size=(640, 480), seed=4
    )  # ~85 kB
    with serve({"clip.mp4": clip.read_bytes()}) as server:
        inputs = write_list(tmp_path / "urls.csv", [{"url": server.url("/v/clip.mp4"), "title": "a clip"}])
        root = small_disk / "root"
        cfg = load_config(
            None,
            [
                f"run.root={root}",
                "run.stages=[discover, download]",
                f"discover.inputs=[{inputs}]",
                "download.retries=0",
                "download.allow_private_addresses=true",
            ],
        )
        run_stage(cfg, "discover")
        fill(small_disk)
        with open(small_disk / "filler", "r+b") as f:  # room for manifest parts, none for the clip
            f.truncate(os.path.getsize(small_disk / "filler") - 48 * 1024)
        first = run_stage(cfg, "download")
        assert first.counts["failed"] == 1
        (row,) = pq.read_table(str(root / "download")).to_pylist()
        assert row["error"].startswith(f"{TRANSIENT}no space left on device"), row
        (small_disk / "filler").unlink()
        again = run_stage(cfg, "download")  # no --retry-failed
        rows = pq.read_table(str(root / "download")).to_pylist()
        assert again.rows_in == 1 and [r["status"] for r in rows] == ["ok"]
        assert rows[0]["sha256"] == hashlib.sha256(clip.read_bytes()).hexdigest()
