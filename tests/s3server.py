"""A real S3-compatible server on 127.0.0.1 for tests and benchmarks: moto in server mode, in its own
process, so that what the client holds in memory and what the server stores stay separate.

``S3Server.start()`` picks a free port, waits until the server answers and sets fake credentials in
the environment (the platform's usual chain: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``), which
child processes (pipeline runs, Ray workers) inherit. ``storage()`` is the ``run.storage`` section
that points vidal at it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    port: int = 0
    process: subprocess.Popen | None = None
    buckets: set[str] = field(default_factory=set)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> S3Server:
        os.environ.update(FAKE_CREDENTIALS)
        self.port = self.port or free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.process.returncode}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=2).close()
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"moto server did not answer on {self.endpoint} within {timeout_s} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def storage(self) -> dict[str, object]:
        """The ``run.storage`` settings for this server (credentials stay in the environment)."""
        return {"endpoint": self.endpoint, "region": "us-east-1", "retries": 2,
                "connect_timeout_s": 5, "request_timeout_s": 30}

    def make_bucket(self, name: str) -> str:
        """Create a bucket (idempotent); returns ``s3://name``."""
        import boto3

        if name not in self.buckets:
            client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
            client.create_bucket(Bucket=name)
            self.buckets.add(name)
        return f"s3://{name}"

    def client(self):
        """A boto3 client, for what pyarrow does not show (e.g. unfinished multipart uploads)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
