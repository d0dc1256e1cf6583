"""The shard stage under real faults: every video ends in the tars exactly once, and ``_SUCCESS.json``
counts what the tars hold, after a kill -9 of the writer's worker process, of the driver, a full disk, and two
drivers started at once on one root. Samples are counted by reading every tar back."""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from contracts import manifest, store
from pipeline.config import load_config
from pipeline.runner import run_pipeline, run_stage
from pipeline.stall import StorageUnwritable
from stages.probe import ProbeStage

REPO = Path(__file__).resolve().parent.parent
N_VIDEOS = 40


def noise_jpeg(rng: np.random.Generator, size: tuple[int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def make_probe_root(
    root: Path, n: int = N_VIDEOS, frame_bytes: int = 16_384, jpeg_size: tuple[int, int] | None = None
) -> list[str]:
    """A run root whose probe stage is done: ``n`` ok rows with 8 frames each, incompressible bytes
    of ``frame_bytes`` (enough for the shard writer), or real JPEGs of ``jpeg_size`` (for model stages)."""
    rng = np.random.default_rng(0)
    ids = [f"file-{i:04d}" for i in range(n)]
    rows = [
        {
            "video_id": v,
            "status": "ok",
            "duration": 2.0,
            "fps": 15.0,
            "width": 160,
            "height": 120,
            "frames": [noise_jpeg(rng, jpeg_size) if jpeg_size else rng.bytes(frame_bytes) for _ in range(8)],
            "has_audio": False,
        }
        for v in ids
    ]
    for start in range(0, n, 10):
        store.write_parquet(
            manifest.new_part_uri(str(root), "probe"), ProbeStage.rows_to_table(rows[start : start + 10])
        )
    return ids


def tar_keys(root: Path) -> collections.Counter:
    """How many times each key is in the tars (read back member by member)."""
    keys: collections.Counter = collections.Counter()
    for t in sorted((root / "shard").glob("*.tar")):
        with tarfile.open(t) as tar:
            keys.update({m.name.split(".", 1)[0] for m in tar.getmembers()})
    return keys


def assert_exactly_once(root: Path, ids: list[str]) -> None:
    keys = tar_keys(root)
    assert sorted(keys) == sorted(ids), f"missing {set(ids) - set(keys)}, extra {set(keys) - set(ids)}"
    assert max(keys.values()) == 1, {k: n for k, n in keys.items() if n > 1}
    success = json.loads((root / "shard" / "_SUCCESS.json").read_text())
    tars = list((root / "shard").glob("*.tar"))
    assert success["samples"] == len(ids) and success["shards"] == len(tars)
    rows = [r for p in manifest.part_files(str(root), "shard") for r in pq.read_table(p).to_pylist()]
    assert sorted(r["video_id"] for r in rows) == sorted(ids) and all(r["status"] == "ok" for r in rows)
    for r in rows:  # each manifest row names the tar that holds the video
        index = pq.read_table(root / "shard" / f"{r['shard']}.parquet")["key"].to_pylist()
        assert r["video_id"] in index


def shard_config(root: Path, *extra: str):
    return load_config(
        REPO / "configs" / "demo.yaml",
        [f"run.root={root}", "run.demo_media=", "shard.batch_size=8", "shard.samples_per_shard=2", *extra],
    )


def cli(root: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "pipeline/run.py",
        "--config",
        "configs/demo.yaml",
        "--root",
        str(root),
        "--stage",
        "shard",
        "--set",
        "run.ray_address=local",
        "--set",
        "run.num_cpus=2",
        "--set",
        "shard.batch_size=8",
        "--set",
        "shard.samples_per_shard=2",
        *extra,
    ]


def wait_for(predicate, timeout_s: float = 180, every_s: float = 0.01) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError("the condition was never reached")
        time.sleep(every_s)


def settle(directory: Path, quiet_s: float = 3.0) -> None:
    """Wait until nothing in ``directory`` changes for ``quiet_s`` (orphaned workers finish or die)."""

    def state():
        return sorted((p.name, p.stat().st_size) for p in directory.iterdir()) if directory.exists() else []

    last, since = state(), time.time()
    while time.time() - since < quiet_s:
        time.sleep(0.2)
        if (now := state()) != last:
            last, since = now, time.time()


def stage_worker_pids() -> list[int]:
    """Pids of this test's Ray workers running a stage's batch now (descendants of this process only): an
    actor of a GPU stage's pool, or a worker process while it runs a stage's task (Ray names a process
    after what it runs)."""
    import psutil

    pids = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            title = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "StageActor" in title or "run_task" in title:
            pids.append(p.pid)
    return pids


def test_writer_killed_mid_batch_rewrites_the_same_tars(tmp_path, ray_local):
    root = tmp_path / "root"
    ids = make_probe_root(root, frame_bytes=65_536)
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(report=run_stage(shard_config(root), "shard")))
    worker.start()
    victims: list[int] = []

    def writing() -> bool:  # a tar is out and the writer is still in its batch (a batch writes four tars)
        victims[:] = stage_worker_pids() if any((root / "shard").glob("*.tar")) else []
        return bool(victims)

    wait_for(writing)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)  # Ray retries the batch in another worker process
    worker.join(timeout=300)
    assert "report" in result, "the stage did not finish after its writer was killed"
    assert_exactly_once(root, ids)


@pytest.mark.slow
def test_driver_killed_mid_shard_then_rerun(tmp_path):
    root = tmp_path / "root"
    ids = make_probe_root(root, frame_bytes=65_536)
    proc = subprocess.Popen(
        cli(root), cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: any((root / "shard").glob("*.tar")))
        os.kill(proc.pid, signal.SIGKILL)  # the driver only: its Ray workers are orphaned, not killed
        proc.wait()
        settle(root / "shard")
        assert not (root / "shard" / "_SUCCESS.json").exists(), "the kill must land mid-stage"
        again = subprocess.run(cli(root), cwd=REPO, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert_exactly_once(root, ids)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_two_drivers_at_once_on_one_root(tmp_path):
    root = tmp_path / "root"
    ids = make_probe_root(root)
    procs = [
        subprocess.Popen(cli(root), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[1][-2000:] for o in outs]
    refused = next(err for p, (_, err) in zip(procs, outs) if p.returncode == 2)
    assert "error: run root" in refused and "pid" in refused and len(refused.strip().splitlines()) == 1
    assert_exactly_once(root, ids)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_disk_full_during_shard_then_rerun_after_freeing_space(tmp_path, ray_local):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    try:
        root = mnt / "root"
        ids = make_probe_root(root)  # ~5 MB of incompressible frames; the shards need as much again
        try:
            (report,) = run_pipeline(shard_config(root), ["shard"])
            assert report.counts["failed"] > 0  # the rows that did not fit failed for a transient reason
        except StorageUnwritable as e:  # or the stage stopped when the manifest itself could not be written
            assert "No space left on device" in str(e) and "rerun the same command" in str(e), e
        assert len(tar_keys(root)) < len(ids), "the disk must fill mid-stage"
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        run_stage(shard_config(root), "shard")  # a plain rerun: transient failures are retried
        assert_exactly_once(root, ids)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_reconcile_repairs_what_interrupted_writers_leave_and_is_idempotent(tmp_path):
    """The states kills leave behind, made by hand: a video in two tars, a tar whose manifest rows were
    never written, an index without its tar, an older root's tar without its index."""
    import pyarrow as pa

    from contracts import shard_format as fmt
    from stages.shard import INDEX_SCHEMA, ShardStage, commit_shard, write_tar
    from stages.shards.reconcile import reconcile

    root = str(tmp_path / "root")
    shard_dir = store.join(root, "shard")

    def publish(keys: list[str]) -> str:
        index = pa.Table.from_pylist([{"key": k, "bytes": 10} for k in keys], schema=INDEX_SCHEMA)
        return commit_shard(
            shard_dir, [(k, {"json": f'{{"video_id": "{k}"}}'.encode()}) for k in keys], index, root, None
        )

    first, second = publish(["a", "b"]), publish(["b", "c"])  # b twice; c's manifest row never written
    store.write_parquet(
        manifest.new_part_uri(root, "shard"),
        ShardStage.rows_to_table(
            [
                {"video_id": "a", "status": "ok", "shard": first, "bytes": 10},
                {"video_id": "b", "status": "ok", "shard": second, "bytes": 10},
            ]
        ),
    )
    store.write_parquet(
        store.join(shard_dir, f"{fmt.shard_name_for(['z'])}.parquet"),
        pa.Table.from_pylist([{"key": "z", "bytes": 1}], schema=INDEX_SCHEMA),
    )  # never committed
    write_tar(store.join(shard_dir, "00007.tar"), [("y", {"json": b"{}"})])  # an older root's tar, index lost
    assert reconcile(root) == {
        "leftovers_removed": 2,
        "duplicates_removed": 1,
        "manifest_rows_dropped": 1,
        "reindexed": 2,
    }
    keys = tar_keys(Path(root))
    assert keys == {"a": 1, "b": 1, "c": 1}
    assert not (Path(shard_dir) / f"{first}.tar").exists()  # rewritten under the name of what it keeps
    assert (Path(shard_dir) / f"{fmt.shard_name_for(['a'])}.tar").exists()
    rows = {
        r["video_id"]: r["shard"]
        for p in manifest.part_files(root, "shard")
        for r in pq.read_table(p).to_pylist()
    }
    assert rows == {"a": fmt.shard_name_for(["a"]), "b": second, "c": second}
    assert set(reconcile(root).values()) == {0}
