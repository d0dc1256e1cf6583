"""URLs that resolve to loopback, private, link-local (cloud metadata), multicast or unspecified addresses
are refused by default: at the first request, at every redirect, and before yt-dlp fetches a page or the
media URLs it found in one. Against a real HTTP server on 127.0.0.1 (allowed only where a test says)."""

from __future__ import annotations

import threading
import time
from urllib.parse import quote, unquote

import pyarrow as pa
import pytest

from contracts.config_io import ConfigError
from pipeline.config import load_config
from stages.base import RunContext
from stages.download import DownloadConfig, DownloadStage
from tests.httpserver import PAGE, CrawlServer, Handler, make_media

METADATA = "http://169.254.169.254/latest/meta-data/iam/security-credentials/role.mp4"


class RedirectingHandler(Handler):
    """The crawl server's routes plus ``/redirect-to/<quoted URL>`` and a page whose video is elsewhere."""

    def route(self) -> None:
        parts = self.path.strip("/").split("/", 1)
        if parts[0] == "redirect-to":
            self.send(302, b"", "text/plain", {"Location": unquote(parts[1])})
        elif parts[0] == "page-pointing-at":  # /page-pointing-at/<quoted URL>/view
            video = f'<video controls src="{unquote(parts[1].rsplit("/", 1)[0])}"></video>'.encode()
            self.send(200, PAGE % (b"a page", b"", video), "text/html; charset=utf-8")
        else:
            super().route()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = CrawlServer()
    s.RequestHandlerClass = RedirectingHandler
    s.files.update(make_media(tmp_path_factory.mktemp("served")))
    threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield s
    s.stopping.set()
    s.shutdown()
    s.server_close()


def download(tmp_path, urls: dict[str, str], **cfg) -> dict[str, dict]:
    stage = DownloadStage(
        DownloadConfig(socket_timeout_s=3.0, retries=0, **cfg), RunContext(root=str(tmp_path))
    )
    stage.setup()
    rows = [{"video_id": f"t-{name}", "url": url, "path": None} for name, url in urls.items()]
    return {r["video_id"][2:]: r for r in stage.process(pa.Table.from_pylist(rows)).to_pylist()}


@pytest.mark.parametrize("route", ["auto", "yt-dlp"])
def test_non_public_addresses_are_refused_by_default(server, tmp_path, route):
    server.reset_stats()
    urls = {
        "loopback": server.url("/v/a.mp4"),
        "localhost": server.url("/v/b.mp4", host="localhost"),
        "metadata": METADATA,
        "private": "http://10.0.0.1/a.mp4",
        "multicast": "http://224.0.0.1/a.mp4",
        "unspecified": "http://0.0.0.0/a.mp4",
        "ipv6_loopback": "http://[::1]/a.mp4",
    }
    started = time.monotonic()
    out = download(tmp_path, urls, route=route)
    assert time.monotonic() - started < 3, "refused before any connection, not after a timeout"
    where = {
        "loopback": "127.0.0.1 is a loopback",
        "localhost": "localhost (127.0.0.1) is a loopback",
        "metadata": "169.254.169.254 is a link-local",
        "private": "10.0.0.1 is a private",
        "multicast": "224.0.0.1 is a multicast",
        "unspecified": "0.0.0.0 is an unspecified",
        "ipv6_loopback": "::1 is a loopback",
    }
    for name, words in where.items():
        assert out[name]["status"] == "failed", out[name]
        assert (
            out[name]["error"]
            == f"refused: {words} address; set download.allow_private_addresses to allow it"
        )
    assert server.log == [], "nothing reached the server"


@pytest.mark.parametrize("route", ["auto", "yt-dlp"])
def test_every_redirect_is_checked(server, tmp_path, route):
    """On both routes: with yt-dlp forced, a URL only its generic extractor takes has its redirects
    followed through the checked session before yt-dlp fetches it."""
    server.reset_stats()
    hop = {
        "to_metadata": server.url("/redirect-to/" + quote(METADATA, safe="")),
        "to_private": server.url("/redirect-to/" + quote("http://192.168.1.1/cam.mp4", safe="")),
        "to_allowed": server.url("/redirect/a.mp4"),
    }
    started = time.monotonic()
    out = download(tmp_path, hop, route=route, allow_private_addresses=["127.0.0.1/32"])  # the test server
    assert time.monotonic() - started < 3
    assert out["to_metadata"]["error"] == (
        "redirect refused: 169.254.169.254 is a link-local address; "
        "set download.allow_private_addresses to allow it"
    )
    assert out["to_private"]["error"].startswith("redirect refused: 192.168.1.1 is a private address")
    downloader = "http" if route == "auto" else "yt-dlp"
    assert (out["to_allowed"]["status"], out["to_allowed"]["downloader"]) == ("ok", downloader)


def test_a_page_cannot_point_ytdlp_at_the_metadata_service(server, tmp_path):
    page = server.url("/page-pointing-at/" + quote(METADATA, safe="") + "/view")
    out = download(tmp_path, {"page": page}, allow_private_addresses=["127.0.0.1"])["page"]
    assert out["status"] == "failed"
    assert out["error"] == (
        "the page's media URL was refused: 169.254.169.254 is a link-local address; "
        "set download.allow_private_addresses to allow it"
    )


def test_a_page_cannot_point_ytdlp_at_a_redirect_to_the_metadata_service(server, tmp_path):
    """The page's media URL is on an allowed host, but redirects on: refused before yt-dlp follows it."""
    hop = "/redirect-to/" + quote(METADATA, safe="")
    page = server.url("/page-pointing-at/" + quote(hop, safe="") + "/view")
    started = time.monotonic()
    out = download(tmp_path, {"page": page}, allow_private_addresses=["127.0.0.1"])["page"]
    assert time.monotonic() - started < 3, "refused before any connection to the metadata service"
    assert (out["status"], out["error"]) == (
        "failed",
        "the page's media URL: redirect refused: 169.254.169.254 "
        "is a link-local address; set download.allow_private_addresses to allow it",
    )


def test_allowed_networks_are_checked_when_the_config_loads():
    assert load_config(
        None, ["download.allow_private_addresses=[10.1.0.0/16]"]
    ).download.allow_private_addresses == ["10.1.0.0/16"]
    with pytest.raises(
        ConfigError, match="download.allow_private_addresses: .*'10.0.0.0/33' does not appear"
    ):
        load_config(None, ["download.allow_private_addresses=[10.0.0.0/33]"])
