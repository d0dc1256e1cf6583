"""The run store against a real S3 server (moto on 127.0.0.1): settings, atomic streamed writes,
what a failed or killed writer leaves, and the settings reaching other processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contracts import store
from contracts.config_io import ConfigError
from pipeline.config import load_config

REPO = Path(__file__).resolve().parent.parent
MB = 1 << 20


@pytest.fixture(scope="module")
def bucket(s3_server):
    store.configure(s3_server.storage())
    return s3_server.make_bucket("store-tests")


def keys(s3_server, name: str, prefix: str = "") -> list[str]:
    listed = s3_server.client().list_objects_v2(Bucket=name, Prefix=prefix)
    # pyarrow keeps a directory marker ("dir/") where it deleted a directory's last object
    return sorted(o["Key"] for o in listed.get("Contents", []) if not o["Key"].endswith("/"))


def unfinished_uploads(s3_server, name: str) -> list[str]:
    return [u["Key"] for u in s3_server.client().list_multipart_uploads(Bucket=name).get("Uploads", [])]


def test_storage_settings_are_validated_and_hold_no_credentials():
    s = store.StorageSettings(endpoint="http://127.0.0.1:9000")
    assert s.transport() == ("http", "127.0.0.1:9000")
    assert store.StorageSettings(endpoint="minio.lan:9000").transport() == ("https", "minio.lan:9000")
    assert store.StorageSettings(endpoint="minio.lan:9000", scheme="http").transport() == (
        "http",
        "minio.lan:9000",
    )
    with pytest.raises(
        ConfigError, match="run.storage: .*secret_key: credentials are never read from a config"
    ):
        load_config(None, ["run.storage.secret_key=abc"])
    with pytest.raises(ConfigError, match="run.storage.retries"):
        load_config(None, ["run.storage.retries=-1"])
    with pytest.raises(ConfigError, match="says http but scheme is https"):
        load_config(None, ["run.storage.endpoint=http://x:1", "run.storage.scheme=https"])
    cfg = load_config(None, ["run.storage.endpoint=http://127.0.0.1:9000", "run.storage.region=eu-west-1"])
    assert cfg.run.storage.region == "eu-west-1"
    with pytest.raises(ValueError, match="options in the URI are not supported; set them in run.storage"):
        store.resolve("s3://bucket/run?endpoint_override=127.0.0.1:9000")


def test_atomic_write_publishes_only_complete_objects(s3_server, bucket):
    uri = store.join(bucket, "atomic", "a.bin")
    with store.open_atomic(uri) as f:
        f.write(b"abc")
        assert not store.exists(uri)
    assert store.read_bytes(uri) == b"abc"

    broken = store.join(bucket, "atomic", "broken.bin")
    with pytest.raises(RuntimeError), store.open_atomic(broken) as f:
        f.write(os.urandom(12 * MB))  # past one part: the upload has begun on the server
        raise RuntimeError("writer died")
    assert keys(s3_server, "store-tests", "atomic/") == ["atomic/a.bin"]  # no half object, no temp object
    assert not unfinished_uploads(s3_server, "store-tests")


def test_writer_streams_parts_and_never_holds_the_whole_object(s3_server, bucket):
    uri = store.join(bucket, "stream", "big.tar")
    parts_seen = []
    with store.open_atomic(uri) as f:
        for _ in range(40):
            f.write(os.urandom(MB))
            uploads = s3_server.client().list_multipart_uploads(Bucket="store-tests").get("Uploads", [])
            parts_seen.append(
                sum(
                    len(
                        s3_server.client()
                        .list_parts(Bucket="store-tests", Key=u["Key"], UploadId=u["UploadId"])
                        .get("Parts", [])
                    )
                    for u in uploads
                )
            )
    # parts leave the process while it writes (no whole-object buffer), and the count only grows
    assert parts_seen[-1] >= 2 and parts_seen == sorted(parts_seen)
    assert (
        s3_server.client().head_object(Bucket="store-tests", Key="stream/big.tar")["ContentLength"] == 40 * MB
    )
    assert keys(s3_server, "store-tests", "stream/") == ["stream/big.tar"]


WRITER = """
import os, sys, time
from contracts import store
with store.open_atomic(sys.argv[1]) as f:
    for i in range(1000):
        f.write(os.urandom(1 << 20))
        if i == 12:
            print("uploading", flush=True)
        time.sleep(0.05)
"""


def test_kill_during_upload_leaves_nothing_that_a_rerun_trusts(s3_server, bucket):
    uri = store.join(bucket, "killed", "00000.tar")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, uri], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "uploading"
    deadline = time.monotonic() + 60
    while not unfinished_uploads(s3_server, "store-tests") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert unfinished_uploads(s3_server, "store-tests"), "the writer never started its upload"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    parent = store.join(bucket, "killed")
    assert not store.exists(uri) and store.list_files(parent) == []  # no object, not even the temp one
    left = unfinished_uploads(s3_server, "store-tests")  # invisible; a lifecycle rule reclaims them
    assert left and all(k.rsplit("/", 1)[1].startswith(store.TMP_PREFIX) for k in left)
    store.write_bytes(uri, b"rerun")  # the rerun writes the real one
    assert store.read_bytes(uri) == b"rerun" and store.remove_temp_files(parent) == 0


def test_settings_reach_child_processes_through_the_environment(s3_server, bucket):
    store.write_bytes(store.join(bucket, "env", "x.txt"), b"from the parent")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT")}
    assert store.ENV_VAR in env
    code = "from contracts import store; import sys; print(store.read_bytes(sys.argv[1]).decode())"
    out = subprocess.run(
        [sys.executable, "-c", code, store.join(bucket, "env", "x.txt")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip() == "from the parent", out.stderr[-2000:]
    assert store.worker_env() == {store.ENV_VAR: env[store.ENV_VAR]}


def test_aws_endpoint_url_is_honoured_without_run_storage(s3_server, bucket):
    store.write_bytes(store.join(bucket, "env", "y.txt"), b"plain aws env")
    env = {k: v for k, v in os.environ.items() if k != store.ENV_VAR}
    env["AWS_ENDPOINT_URL"] = s3_server.endpoint
    code = "from contracts import store; import sys; print(store.read_bytes(sys.argv[1]).decode())"
    out = subprocess.run(
        [sys.executable, "-c", code, store.join(bucket, "env", "y.txt")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip() == "plain aws env", out.stderr[-2000:]


def test_train_out_on_an_object_store_is_refused_before_any_work(capsys, tmp_path):
    from model.train import main as train_main

    assert train_main(["--config", str(REPO / "configs/train/demo.yaml"), "--out", "s3://bucket/train"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out: s3://bucket/train is an object-store URI" in err[0]
    assert not (Path.cwd() / "s3:").exists()


def test_gcs_filesystem_is_built_from_the_same_settings():
    """GCS is untested against a server; this checks that its filesystem takes the settings."""
    import pyarrow.fs as pafs

    previous = store.settings()
    try:
        store.configure({"endpoint": "http://127.0.0.1:1", "anonymous": True, "retry_time_limit_s": 5})
        fs, path = store.resolve("gs://some-bucket/run/shard/")
        assert isinstance(fs, pafs.GcsFileSystem) and path == "some-bucket/run/shard"
        assert store.resolve("gs://some-bucket/x")[0] is fs  # built once per settings
    finally:
        store.configure(previous)


def test_a_copy_answered_too_late_still_publishes_once(s3_server, bucket, monkeypatch):
    """The server finishes the server-side copy but answers after the client gave up on it."""
    from tests.s3server import StallingProxy

    proxy = StallingProxy(s3_server.port, pattern=rb"(?i)x-amz-copy-source", delay_s=5.0)
    previous = store.settings()
    try:
        store.configure({**s3_server.storage(), "endpoint": proxy.endpoint, "request_timeout_s": 2})
        uri = store.join(bucket, "slowcopy", "x.bin")
        with monkeypatch.context() as m:
            m.setattr(store, "COPY_WAIT_S", 0.0)
            with pytest.raises(OSError, match="copying key"):  # without the check, the write fails
                store.write_bytes(uri, b"late but whole")
        store.write_bytes(uri, b"late but whole")
    finally:
        store.configure(previous)
        proxy.close()
    assert store.read_bytes(uri) == b"late but whole"
    assert keys(s3_server, "store-tests", "slowcopy/") == ["slowcopy/x.bin"]  # the temp object is gone
