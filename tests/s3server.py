"""A real S3-compatible server on 127.0.0.1 for tests and benchmarks: moto in server mode, in its own
process, so that what the client holds in memory and what the server stores stay separate.

``S3Server.start()`` picks a free port, waits until the server answers and sets fake credentials in
the environment (the platform's usual chain: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``), which
child processes (pipeline runs, Ray workers) inherit. ``storage()`` is the ``run.storage`` section
that points vidal at it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


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
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        atexit.register(self.stop)  # a script that dies early leaves no server behind
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
        return {
            "endpoint": self.endpoint,
            "region": "us-east-1",
            "retries": 2,
            "connect_timeout_s": 5,
            "request_timeout_s": 30,
        }

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


class StallingProxy:
    """A TCP proxy in front of the server that holds the ``nth`` upload whose request line matches
    ``pattern`` half way: its headers and part of its body reach the server, the rest never does.
    ``stalled`` is set then, so a test can kill the uploader while its upload is in flight.

    With ``delay_s`` it stalls nothing but holds back the answers to every matching request that
    long (a server slow to answer, e.g. a long server-side copy)."""

    def __init__(
        self, target_port: int, pattern: bytes = rb"PUT /\S*\.tar[ ?]", nth: int = 1, delay_s: float = 0.0
    ):
        import re
        import threading

        self.target_port, self.regex, self.nth, self.delay_s = target_port, re.compile(pattern), nth, delay_s
        self.seen = 0
        self.stalled = threading.Event()
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            pending: list[float] = []  # per connection: answers to hold back
            threading.Thread(target=self._pipe, args=(client, upstream, True, pending), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False, pending), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool, pending: list[float]) -> None:
        try:
            while data := src.recv(65536):
                if not from_client and pending:
                    time.sleep(pending.pop())
                if from_client and self.delay_s and self.regex.search(data):
                    pending.append(self.delay_s)
                elif from_client and self.regex.search(data):
                    with self._lock:
                        self.seen += 1
                        hold = self.seen == self.nth
                    if hold:
                        dst.sendall(data[: len(data) // 2])
                        self.stalled.set()
                        while src.recv(65536):  # swallow the rest: the upload never completes
                            pass
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self._listener.close()
