"""Local inputs (``path`` rows) that are not regular files, or too big, are failed or filtered rows with
the reason, and the good rows of the same batch survive: a real list through discover and download on
a real local Ray instance, with /dev/zero, /dev/urandom, a real FIFO and a directory among its paths."""

from __future__ import annotations

import hashlib
import os

import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.runner import run_pipeline
from tests.conftest import write_list


@pytest.mark.timeout(180)  # the old code read /dev/zero for ever
def test_only_regular_files_are_read_and_within_the_caps(tmp_path, ray_local, good_videos):
    os.mkfifo(fifo := tmp_path / "pipe.mp4")
    (folder := tmp_path / "folder.mp4").mkdir()
    with open(big := tmp_path / "big.mp4", "wb") as f:
        f.truncate(3_000_000)  # sparse: 3 MB over a 2 MB cap
    paths = {
        "good": str(good_videos[0]),
        "zero": "/dev/zero",
        "urandom": "/dev/urandom",
        "fifo": str(fifo),
        "folder": str(folder),
        "big": str(big),
        "good2": str(good_videos[1]),
    }
    inputs = write_list(tmp_path / "paths.csv", [{"path": p, "title": name} for name, p in paths.items()])
    root = tmp_path / "root"
    cfg = load_config(
        None,
        [
            f"run.root={root}",
            "run.stages=[discover, download]",
            f"discover.inputs=[{inputs}]",
            "download.batch_size=16",
            "download.max_filesize_mb=2",
            "download.max_download_s=20",
        ],
    )
    run_pipeline(cfg, ["discover", "download"])
    titles = {r["video_id"]: r["title"] for r in pq.read_table(str(root / "discover")).to_pylist()}
    got = {titles[r["video_id"]]: r for r in pq.read_table(str(root / "download")).to_pylist()}
    assert sorted(got) == sorted(paths)
    for name in ("good", "good2"):
        data = open(paths[name], "rb").read()
        assert (got[name]["status"], got[name]["downloader"]) == ("ok", "local")
        assert got[name]["sha256"] == hashlib.sha256(data).hexdigest() and got[name]["bytes"] == len(data)
    reasons = {name: (r["status"], r["error"]) for name, r in got.items() if name not in ("good", "good2")}
    assert reasons == {
        "zero": ("failed", "not a regular file (a character device): /dev/zero"),
        "urandom": ("failed", "not a regular file (a character device): /dev/urandom"),
        "fifo": ("failed", f"not a regular file (a FIFO (named pipe)): {fifo}"),
        "folder": ("failed", f"not a regular file (a directory): {folder}"),
        "big": ("filtered", "file larger than the size cap (3.0 MB > 2.0 MB)"),
    }


def test_a_local_read_is_bounded_by_the_download_time_cap(tmp_path):
    """The wall-clock cap is checked while the file is read (here a cap no read of 8 MB can meet)."""
    import pyarrow as pa

    from stages.base import RunContext
    from stages.download import DownloadConfig, DownloadStage

    with open(slow := tmp_path / "slow.mp4", "wb") as f:
        f.truncate(8_000_000)
    stage = DownloadStage(
        DownloadConfig(max_filesize_mb=10, max_download_s=1e-6), RunContext(root=str(tmp_path))
    )
    stage.setup()
    (out,) = stage.process(
        pa.Table.from_pylist([{"video_id": "file-slow", "url": None, "path": str(slow)}])
    ).to_pylist()
    assert (out["status"], out["error"]) == (
        "failed",
        f"reading the file took over 1e-06 s (download.max_download_s): {slow}",
    )
