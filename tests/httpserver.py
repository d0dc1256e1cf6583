"""A real HTTP server on 127.0.0.1 for the crawl tests: videos, pages, failures, slow and stalled bodies.

Routes (GET), ``<name>`` being a file registered in ``server.files``:

- ``/v/<name>``: the file (``video/mp4``) with Content-Length;  ``/ctype/<type>/<name>``: same
  bytes under another Content-Type (``application/octet-stream``, ``text/html``…), no extension
- ``/page/<stem>``: an HTML page showing ``<stem>.mp4`` in a ``<video>`` tag (yt-dlp's generic extractor)
- ``/twovideos``: a page with two ``<video>`` tags (a playlist to yt-dlp); ``/plain``: a page without video; ``/html.mp4``: the same page behind a video extension
- ``/status/<code>/<anything>``; ``/flaky/<k>/<name>``: 500 for the first k requests, then the file
- ``/stall/<name>``: headers and 4 KB, then silence; ``/drip/<name>``: 32 bytes every 0.1 s
- ``/slow/<seconds>/<name>``: waits, then the file (concurrency measurements)
- ``/loop/<n>``: a redirect loop; ``/redirect/<name>``: 302 to ``/v/<name>``
- ``/big/<mb>.mp4`` (Content-Length) and ``/bignolength/<mb>.mp4`` (close-delimited): an MP4 header
  then zeros; ``/nolength/<name>``: the file without Content-Length; ``/chunked/<name>``: chunked
- ``/robots/<value>/<name>``: the file with ``X-Robots-Tag: <value>``; ``/metarobots/<content>``: a
  page with a robots ``<meta>``; ``/empty.mp4``; ``/garbage.mp4``

Every request is logged with its Host header and start/end times; ``max_in_flight`` gives the highest
concurrency seen per host, so that tests measure rate and connection limits on the server side.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

PAGE = b"<!DOCTYPE html><html><head><title>%s</title>%s</head><body>%s</body></html>"


@dataclass
class Hit:
    path: str
    host: str
    start: float
    end: float = 0.0


class CrawlServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.log: list[Hit] = []
        self.counts: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight: dict[str, int] = defaultdict(int)
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def handle_error(self, request, client_address) -> None:
        pass  # clients that hang up mid-response are part of the tests, not news

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.server_address[1]}{path}"

    def hits(self, prefix: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.log if h.path.startswith(prefix)]

    def reset_stats(self) -> None:
        with self.lock:
            self.log.clear()
            self.max_in_flight.clear()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: CrawlServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        s = self.server
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        hit = Hit(self.path, host, time.time())
        with s.lock:
            s.log.append(hit)
            s.counts[self.path] += 1
            s.in_flight[host] += 1
            s.max_in_flight[host] = max(s.max_in_flight[host], s.in_flight[host])
        try:
            self.route()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with s.lock:
                s.in_flight[host] -= 1
                hit.end = time.time()

    # -- responses -----------------------------------------------------------------------------
    def send(
        self,
        code: int,
        body: bytes,
        ctype: str = "video/mp4",
        headers: dict | None = None,
        length: bool = True,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def file(self, name: str) -> bytes | None:
        data = self.server.files.get(name)
        if data is None:
            self.send(404, b"no such file", "text/plain")
        return data

    def route(self) -> None:
        s = self.server
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        head, rest = parts[0], parts[1:]
        if head == "v" and (data := self.file(rest[0])) is not None:
            self.send(200, data)
        elif head == "ctype" and (data := self.file(rest[-1])) is not None:
            self.send(200, data, unquote("/".join(rest[:-1])))
        elif head == "page":
            video = f'<video controls src="/v/{rest[0]}.mp4"></video>'.encode()
            self.send(200, PAGE % (rest[0].encode(), b"", video), "text/html; charset=utf-8")
        elif head == "twovideos":
            videos = b'<video src="/v/a.mp4"></video><video src="/v/b.mp4"></video>'
            self.send(200, PAGE % (b"two videos", b"", videos), "text/html; charset=utf-8")
        elif head in ("plain", "html.mp4"):
            self.send(200, PAGE % (b"no video here", b"", b"<p>Just words.</p>"), "text/html; charset=utf-8")
        elif head == "status":
            self.send(int(rest[0]), f"status {rest[0]}".encode(), "text/plain")
        elif head == "flaky":
            k = int(rest[0])
            if s.counts[self.path] <= k:
                self.send(500, b"try again", "text/plain")
            elif (data := self.file(rest[1])) is not None:
                self.send(200, data)
        elif head == "stall" and (data := self.file(rest[0])) is not None:
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:4096])
            self.wfile.flush()
            s.stopping.wait(30)
            self.close_connection = True
        elif head == "drip" and (data := self.file(rest[0])) is not None:
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            for i in range(0, len(data), 32):
                if s.stopping.wait(0.1):
                    break
                self.wfile.write(data[i : i + 32])
                self.wfile.flush()
            self.close_connection = True
        elif head == "slow":
            time.sleep(float(rest[0]))
            if (data := self.file(rest[1])) is not None:
                self.send(200, data)
        elif head == "loop":
            self.send(302, b"", "text/plain", {"Location": f"/loop/{int(rest[0]) + 1}"})
        elif head == "redirect":
            self.send(302, b"", "text/plain", {"Location": f"/v/{rest[0]}"})
        elif head in ("big", "bignolength"):
            self.big(int(rest[0].split(".")[0]) * 1_000_000, with_length=head == "big")
        elif head == "nolength" and (data := self.file(rest[0])) is not None:
            self.send(200, data, length=False)
        elif head == "chunked" and (data := self.file(rest[0])) is not None:
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(data), 5000):
                piece = data[i : i + 5000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif head == "robots" and (data := self.file(rest[1])) is not None:
            self.send(200, data, headers={"X-Robots-Tag": unquote(rest[0])})
        elif head == "metarobots":
            meta = f'<meta name="robots" content="{unquote(rest[0])}">'.encode()
            self.send(200, PAGE % (b"opted out", meta, b'<video src="/v/any.mp4"></video>'), "text/html")
        elif head == "empty.mp4":
            self.send(200, b"")
        elif head == "garbage.mp4":
            self.send(200, random.Random(0).randbytes(4096))  # fixed: never starts like a page
        else:
            self.send(404, b"not found", "text/plain")

    def big(self, size: int, with_length: bool) -> None:
        head = next(iter(self.server.files.values()))[:4096]  # a real MP4 start, so sniffing passes
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        if with_length:
            self.send_header("Content-Length", str(size))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(head)
        zeros = bytes(1 << 16)
        sent = len(head)
        while sent < size and not self.server.stopping.is_set():
            n = min(len(zeros), size - sent)
            self.wfile.write(zeros[:n])
            sent += n


@contextmanager
def serve(files: dict[str, bytes]):
    """Run a ``CrawlServer`` with these files in a background thread for the ``with`` block."""
    server = CrawlServer()
    server.files.update(files)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()


def unused_port() -> int:
    """A local port with nothing listening (for 'connection refused')."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_media(directory) -> dict[str, bytes]:
    """The files the tests serve: two short clips (one also without extension) and a 25 s clip."""
    from pathlib import Path

    from pipeline.synthetic import CONCEPTS, make_clip

    d = Path(directory)
    make_clip(d / "a.mp4", CONCEPTS[0], seconds=1.0, fps=10, size=(160, 120), seed=1)
    make_clip(d / "b.mp4", CONCEPTS[5], seconds=1.0, fps=10, size=(160, 120), seed=2)
    make_clip(d / "long.mp4", CONCEPTS[9], seconds=25.0, fps=4, size=(64, 48), audio=False, seed=3)
    files = {p.name: p.read_bytes() for p in (d / "a.mp4", d / "b.mp4", d / "long.mp4")}
    files["clip"] = files["a.mp4"]
    return files
