"""The cluster path against a real S3 server (moto on 127.0.0.1): the demo pipeline writing to
``s3://``, resume, ``--force``, the shards read back by webdataset, model.train and model.eval on them
by prefix, the report of the remote root, and a kill -9 in the middle of a tar upload.

One pipeline run (a real driver process with its own local Ray) is shared by the module; the storage
settings reach it through ``--set run.storage...`` only (no endpoint variable in its environment).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contracts import shard_format as fmt
from contracts import store
from pipeline.synthetic import CONCEPTS, make_clip

REPO = Path(__file__).resolve().parent.parent
BUCKET = "vidal-demo"
CLIPS = 6
STAGES = ("discover", "download", "probe", "caption", "asr", "enhance", "depth", "infrared", "shard")


def storage_args(endpoint: str) -> list[str]:
    return [
        "--set",
        f"run.storage.endpoint={endpoint}",
        "--set",
        "run.storage.region=us-east-1",
        "--set",
        "run.storage.retries=2",
    ]


def driver_env() -> dict[str, str]:
    """The environment of a pipeline driver: credentials only (the endpoint comes from the config)."""
    env = {k: v for k, v in os.environ.items() if k != store.ENV_VAR and not k.startswith("AWS_ENDPOINT")}
    env["HF_HUB_OFFLINE"] = "1"
    return env


def pipeline_cmd(root: str, inputs: Path, endpoint: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline.run",
        "--config",
        "configs/demo.yaml",
        "--input",
        str(inputs),
        "--root",
        root,
        "--quiet",
        "--set",
        "run.num_cpus=2",
        "--set",
        "run.demo_media=",
        "--set",
        "shard.samples_per_shard=2",
        "--set",
        f"run.stages=[{','.join(STAGES)}]",  # VIDAL's nine: the demo's curation stages are not this test's
        *storage_args(endpoint),
        *extra,
    ]


def run_pipeline_cli(root: str, inputs: Path, endpoint: str, *extra: str, timeout: int = 540) -> str:
    out = subprocess.run(
        pipeline_cmd(root, inputs, endpoint, *extra),
        cwd=REPO,
        env=driver_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out.stdout


def clip_list(d: Path, n: int = CLIPS) -> Path:
    """``n`` short clips as ``file://`` URLs (so download copies each into ``{root}/media``)."""
    rows = []
    for i, concept in enumerate(CONCEPTS[:n]):
        clip = d / f"{concept.slug}.mp4"
        make_clip(clip, concept, seconds=1.0, fps=10, size=(96, 72), seed=i)
        rows.append({"url": clip.as_uri(), "title": concept.title, "hashtags": "#demo"})
    path = d / "clips.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["url", "title", "hashtags"])
        w.writeheader()
        w.writerows(rows)
    return path


def success(root: str, stage: str) -> dict:
    return store.read_json(store.join(root, stage, "_SUCCESS.json"))


def tars(root: str) -> list[str]:
    return [
        u
        for u in store.list_files(store.join(root, "shard"), suffix=".tar")
        if not u.rsplit("/", 1)[1].startswith(".")
    ]


def tar_keys(root: str) -> list[str]:
    """Every sample key of every tar (a key twice means a duplicated sample)."""
    import tarfile

    keys = []
    for uri in tars(root):
        with store.open_input(uri) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            keys += [m.name.split(".", 1)[0] for m in tar if m.name.endswith(f".{fmt.JSON_KEY}")]
    return keys


@pytest.fixture(scope="module")
def s3_run(s3_server, tmp_path_factory):
    store.configure(s3_server.storage())
    root = store.join(s3_server.make_bucket(BUCKET), "demo")
    inputs = clip_list(tmp_path_factory.mktemp("s3_clips"))
    started = time.time()
    stdout = run_pipeline_cli(root, inputs, s3_server.endpoint)
    return {"root": root, "inputs": inputs, "stdout": stdout, "wall_s": time.time() - started}


def test_demo_pipeline_writes_every_stage_to_the_bucket(s3_run):
    root = s3_run["root"]
    for stage in STAGES:
        info = success(root, stage)
        assert info["totals"] == {"ok": CLIPS, "failed": 0, "filtered": 0}, (stage, info["totals"])
    media = store.list_files(store.join(root, "media"), suffix=".mp4")
    assert len(media) == CLIPS  # downloads streamed to the bucket
    assert sorted(tar_keys(root)) == sorted(r["video_id"] for r in _rows(root, "probe"))
    assert success(root, "shard")["samples"] == CLIPS
    assert not (REPO / "s3:").exists()  # nothing took the URI for a local path
    assert f"run root: {root}" in s3_run["stdout"]


def _rows(root: str, stage: str) -> list[dict]:
    import pyarrow.parquet as pq

    from contracts import manifest

    rows = []
    for part in manifest.part_files(root, stage):
        fs, path = store.resolve(part)
        rows += pq.read_table(path, filesystem=fs, columns=["video_id", "status"]).to_pylist()
    return rows


@pytest.mark.slow
def test_rerun_does_nothing_and_force_redoes_one_stage(s3_run, s3_server):
    root, inputs = s3_run["root"], s3_run["inputs"]
    before = {s: len(store.list_files(store.join(root, s), suffix=".parquet")) for s in STAGES}
    run_pipeline_cli(root, inputs, s3_server.endpoint)
    for stage in STAGES:
        info = success(root, stage)
        assert info["rows_in"] == 0 and info["skipped_already_done"] == CLIPS, (stage, info)
    assert {s: len(store.list_files(store.join(root, s), suffix=".parquet")) for s in STAGES} == before

    run_pipeline_cli(root, inputs, s3_server.endpoint, "--stage", "shard", "--force")
    info = success(root, "shard")
    assert info["rows_in"] == CLIPS and info["samples"] == CLIPS
    keys = tar_keys(root)
    assert len(keys) == len(set(keys)) == CLIPS


def test_webdataset_reads_the_shards_over_the_object_store(s3_run):
    import importlib

    import webdataset as wds

    gopen = importlib.import_module("webdataset.gopen")  # the module (the package exports its function)

    # webdataset opens URLs by scheme; s3:// goes through vidal's store (its run.storage settings)
    gopen.gopen_schemes["s3"] = lambda url, mode="rb", bufsize=8192, **kw: store.open_input_stream(url)
    try:
        samples = list(wds.WebDataset(tars(s3_run["root"]), shardshuffle=False, empty_check=False))
    finally:
        del gopen.gopen_schemes["s3"]
    assert len(samples) == CLIPS
    for s in samples:
        meta = json.loads(s[fmt.JSON_KEY])
        assert meta["video_id"] == s["__key__"] and s["__url__"].startswith("s3://")
        assert all(s[fmt.frame_key(m, 0)] for m in ("rgb", "depth", "ir"))


def test_train_and_eval_on_the_remote_shards_by_prefix(s3_run, tmp_path):
    from model.eval import main as eval_main
    from model.train import main as train_main
    from tests.test_train import write_config

    shard_dir = store.join(s3_run["root"], "shard")
    cfg = write_config(tmp_path, Path("unused"), data={"workers": 1, "batch_size": 2, "shuffle_buffer": 0})
    run = tmp_path / "run"
    assert train_main(["--config", str(cfg), "--data", shard_dir, "--out", str(run)]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in log if r["kind"] == "train") == CLIPS // 2  # epoch length from the indexes

    names = [u.rsplit("/", 1)[1] for u in tars(s3_run["root"])]
    brace = f"{shard_dir}/{{{','.join(names)}}}"
    prefix = f"{shard_dir}/{os.path.commonprefix(names)}"  # a name prefix, not a directory
    for data, expected in (
        (shard_dir + "/", CLIPS),
        (brace, CLIPS),
        (prefix, CLIPS),
        (f"{shard_dir}/{names[0]}::{shard_dir}/{names[1]}", 4),
    ):
        out = tmp_path / "eval.json"
        assert (
            eval_main(["--checkpoint", str(run), "--data", data, "--workers", "1", "--json", str(out)]) == 0
        )
        assert json.loads(out.read_text())["modalities"]["video"]["samples"] == expected, data


def test_report_of_a_remote_root(s3_run, tmp_path):
    from pipeline.report import main as report_main

    out = tmp_path / "report"
    assert report_main(["--root", s3_run["root"], "--out", str(out), "--samples", "3"]) == 0
    page = (out / "index.html").read_text()
    assert "infrared" in page and len(list((out / "samples").rglob("*.jpg"))) >= 3
    refused = subprocess.run(
        [sys.executable, "-m", "pipeline.report", "--root", s3_run["root"]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        f"error: the run root {s3_run['root']} is remote: give --out, a local directory for the report"
    ]


def kill_tree(pid: int) -> None:
    import psutil

    proc = psutil.Process(pid)
    for p in [proc, *proc.children(recursive=True)]:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


@pytest.mark.slow
def test_kill_during_a_tar_upload_then_rerun_keeps_one_copy_of_each_sample(s3_run, s3_server):
    """The driver and its whole local Ray die (kill -9) while the second tar is half uploaded; the
    rerun publishes every sample exactly once."""
    from tests.s3server import StallingProxy

    root, inputs = s3_run["root"], s3_run["inputs"]
    proxy = StallingProxy(s3_server.port, pattern=rb"PUT /\S*/\.tmp-\S*\.tar[ ?]", nth=2)
    proc = subprocess.Popen(
        pipeline_cmd(root, inputs, proxy.endpoint, "--stage", "shard", "--force"),
        cwd=REPO,
        env=driver_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proxy.stalled.wait(300), "the shard stage never uploaded a second tar"
        kill_tree(proc.pid)
        proc.wait(30)
    finally:
        proxy.close()
        if proc.poll() is None:
            kill_tree(proc.pid)
    published = tar_keys(root)
    assert len(published) < CLIPS  # the kill came mid-stage: the second tar is not there
    run_pipeline_cli(root, inputs, s3_server.endpoint, "--stage", "shard")
    keys = tar_keys(root)
    assert sorted(keys) == sorted(set(keys)) and len(keys) == CLIPS
    assert success(root, "shard")["samples"] == CLIPS
    assert not store.list_files(store.join(root, "shard"), prefix=store.TMP_PREFIX)
