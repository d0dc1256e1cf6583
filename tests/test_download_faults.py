"""The download stage against a real HTTP server on 127.0.0.1: success paths and every fault of the
issue, on the automatic route (plain HTTP for media, yt-dlp for pages) and forced through yt-dlp."""

from __future__ import annotations

import hashlib
import json
import os

import pyarrow as pa
import pytest

from stages.base import RunContext
from stages.download import DownloadConfig, DownloadStage
from stages.web.failures import DownloadFailed
from stages.web.ytdlp_fetch import YtdlpDownloader
from tests.httpserver import make_media, serve, unused_port

# The server shares this process (and its GIL) with the download threads: a modest thread count and a
# 2 s socket timeout keep a busy test machine from turning slow answers into timeouts.
FAST = dict(
    socket_timeout_s=2.0,
    retries=1,
    retry_backoff_s=0.05,
    max_filesize_mb=2.0,
    max_download_s=4.0,
    threads=8,
    per_host_connections=8,
    allow_private_addresses=True,
)  # the server is on 127.0.0.1
CASES = {  # name -> path on the server
    "direct": "/v/a.mp4",
    "no_extension": "/ctype/video%2Fmp4/clip",
    "octet_stream": "/ctype/application%2Foctet-stream/clip",
    "page_with_video": "/page/b",
    "redirect": "/redirect/b.mp4",
    "no_length": "/nolength/a.mp4",
    "chunked": "/chunked/b.mp4",
    "flaky": "/flaky/1/b.mp4",
    "other_bot_opt_out": "/robots/otherbot%3A%20noai/a.mp4",
    "http_404": "/status/404/x.mp4",
    "http_403": "/status/403/x.mp4",
    "http_500": "/status/500/x.mp4",
    "stall": "/stall/a.mp4",
    "drip": "/drip/a.mp4",
    "html_instead_of_video": "/html.mp4",
    "page_without_video": "/plain",
    "redirect_loop": "/loop/0",
    "playlist": "/twovideos",
    "oversize": "/big/5.mp4",
    "oversize_no_length": "/bignolength/5.mp4",
    "too_long": "/v/long.mp4",
    "empty": "/empty.mp4",
    "garbage": "/garbage.mp4",
    "x_robots_noai": "/robots/noai/a.mp4",
    "meta_robots": "/metarobots/noindex",
}
BAD_URLS = {
    "refused": None,
    "malformed": "http//example.com/a.mp4",
    "whitespace": "http://exa mple.com/a.mp4",
    "ftp": "ftp://example.com/a.mp4",
    "file_not_enabled": "file:///etc/hostname",
}
# name -> (status, words in the reason), per route
AUTO = {
    "direct": ("ok", "http"),
    "no_extension": ("ok", "http"),
    "octet_stream": ("ok", "http"),
    "page_with_video": ("ok", "yt-dlp"),
    "redirect": ("ok", "http"),
    "no_length": ("ok", "http"),
    "chunked": ("ok", "http"),
    "flaky": ("ok", "http"),
    "other_bot_opt_out": ("ok", "http"),
    "http_404": ("failed", "HTTP 404"),
    "http_403": ("failed", "HTTP 403"),
    "http_500": ("failed", "HTTP 500 Internal Server Error (after 2 attempts)"),
    "stall": ("failed", "stalled: no data for 2 s"),
    "drip": ("failed", "too slow"),
    "html_instead_of_video": ("failed", "sent a page (text/html) instead of a video"),
    "page_without_video": ("failed", "no video found at this URL"),
    "redirect_loop": ("failed", "redirect loop"),
    "playlist": ("failed", "the URL is a playlist (2 entries), not one video"),
    "oversize": ("filtered", "larger than the size cap (5.0 MB > 2.0 MB"),
    "oversize_no_length": ("filtered", "larger than the size cap (over 2.0 MB while streaming"),
    "too_long": ("filtered", "duration 25.0 s over the cap of 20 s (known after download)"),
    "empty": ("failed", "empty response body"),
    "garbage": ("failed", "match no known video container"),
    "x_robots_noai": ("filtered", "opted out by X-Robots-Tag: noai"),
    "meta_robots": ("filtered", 'opted out by <meta name="robots" content="noindex">'),
    "refused": ("failed", "connection refused"),
    "malformed": ("failed", "malformed URL: no scheme"),
    "whitespace": ("failed", "malformed URL"),
    "ftp": ("failed", "unsupported URL scheme 'ftp'"),
    "file_not_enabled": ("failed", "file:// URLs are disabled"),
}
YTDLP = {
    **{
        k: ("ok", "yt-dlp")
        for k in (
            "direct",
            "no_extension",
            "octet_stream",
            "page_with_video",
            "redirect",
            "no_length",
            "chunked",
            "other_bot_opt_out",
            "x_robots_noai",
        )
    },
    "http_404": ("failed", "HTTP 404"),
    "http_403": ("failed", "HTTP 403"),
    "http_500": ("failed", "HTTP 500 Internal Server Error (after 2 attempts)"),
    "stall": ("failed", "stalled: no data for 2 s"),
    "drip": ("failed", "too slow"),
    "html_instead_of_video": ("failed", "no video found"),
    "page_without_video": ("failed", "no video found"),
    "redirect_loop": ("failed", "redirect loop"),
    "oversize": ("filtered", "larger than the size cap"),
    "playlist": ("failed", "the URL is a playlist (2 entries), not one video"),
    "oversize_no_length": ("filtered", "over 2.0 MB while streaming"),
    "too_long": ("filtered", "known after download"),
    "empty": ("failed", "empty response body"),
    "garbage": ("failed", "match no known video container"),
    "refused": ("failed", "connection refused (after 2 attempts)"),
    "flaky": ("ok", "yt-dlp"),
    "meta_robots": ("failed", "HTTP 404"),  # yt-dlp does not read robots <meta>
    **{k: AUTO[k] for k in ("malformed", "whitespace", "ftp", "file_not_enabled")},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve(make_media(tmp_path_factory.mktemp("served"))) as s:
        yield s


def run_rows(stage: DownloadStage, urls: dict[str, str]) -> dict[str, dict]:
    rows = [{"video_id": f"t-{name}", "url": url, "path": None} for name, url in urls.items()]
    out = stage.process(pa.Table.from_pylist(rows)).to_pylist()
    return {r["video_id"][2:]: r for r in out}


def make_stage(root, **cfg) -> DownloadStage:
    s = DownloadStage(DownloadConfig(**{**FAST, **cfg}), RunContext(root=str(root)))
    s.setup()
    return s


@pytest.fixture(scope="module", params=["auto", "yt-dlp"])
def results(request, server, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"dl-{request.param}") / "root"
    stage = make_stage(root, route=request.param)
    urls = {k: server.url(p) for k, p in CASES.items()}
    urls.update({k: v or f"http://127.0.0.1:{unused_port()}/a.mp4" for k, v in BAD_URLS.items()})
    expected = AUTO if request.param == "auto" else YTDLP
    out = run_rows(stage, {k: v for k, v in urls.items() if k in expected})
    return request.param, root, out, expected, server


@pytest.mark.parametrize("case", sorted(AUTO))
def test_each_case_ends_with_its_status_and_reason(results, case):
    route, _, out, expected, _ = results
    if case not in expected:
        pytest.skip(f"not a case of the {route} route")
    status, words = expected[case]
    row = out[case]
    if status == "ok":
        assert (row["status"], row["error"], row["downloader"]) == ("ok", None, words)
        assert row["bytes"] > 0 and len(row["sha256"]) == 64 and row["download_s"] >= 0
    else:
        assert row["status"] == status, row
        assert words in row["error"], row["error"]
        assert "\n" not in row["error"] and row["media"] is None


def test_media_files_are_named_by_video_id_and_hashed(results):
    route, root, out, _, server = results
    media = root / "media"
    names = sorted(os.listdir(media))
    ok = sorted(f"{vid}.mp4" for vid, r in ((f"t-{k}", r) for k, r in out.items()) if r["status"] == "ok")
    assert names == ok, "only finished files, no temp leftovers"
    for r in out.values():
        if r["status"] == "ok":
            data = open(r["media"], "rb").read()
            assert r["media"].startswith(str(media)) and hashlib.sha256(data).hexdigest() == r["sha256"]
            assert len(data) == r["bytes"] and data in server.files.values()
            assert r["ext"] == "mp4"


def test_the_manifest_keeps_what_the_downloader_learned(results):
    route, _, out, _, server = results
    page = out["page_with_video"]
    info = json.loads(page["info_json"])
    assert (
        info["extractor"] in ("generic", "html5")
        and page["format_id"]
        and page["final_url"] == server.url(CASES["page_with_video"])
    )
    direct = out["direct"]
    if route == "auto":
        assert direct["content_type"] == "video/mp4" and json.loads(direct["info_json"])["http_status"] == 200
        assert out["redirect"]["final_url"] == server.url("/v/b.mp4")


def test_a_rerun_reuses_finished_files_without_fetching(results, tmp_path):
    route, root, out, _, server = results
    stage = make_stage(root, route=route)
    before = len(server.hits("/v/a.mp4"))
    again = run_rows(stage, {"direct": server.url("/v/a.mp4")})["direct"]
    assert again["downloader"] == "existing" and again["sha256"] == out["direct"]["sha256"]
    assert len(server.hits("/v/a.mp4")) == before


def test_file_urls_go_through_ytdlp_only_when_enabled(server, tmp_path):
    clip = tmp_path / "local clip.mp4"
    clip.write_bytes(server.files["a.mp4"])
    url = clip.as_uri()
    off = run_rows(make_stage(tmp_path / "off"), {"f": url})["f"]
    assert off["status"] == "failed" and "allow_file_urls" in off["error"]
    on = run_rows(make_stage(tmp_path / "on", allow_file_urls=True), {"f": url})["f"]
    assert (on["status"], on["downloader"]) == ("ok", "yt-dlp")
    assert on["sha256"] == hashlib.sha256(clip.read_bytes()).hexdigest()
    assert os.path.basename(on["media"]) == "t-f.mp4"


def test_ytdlp_own_refusal_of_file_urls_is_put_in_words(server, tmp_path):
    # yt-dlp raises RequestError (not DownloadError) for file:// without enable_file_urls.
    clip = tmp_path / "a.mp4"
    clip.write_bytes(server.files["a.mp4"])
    dl = YtdlpDownloader({"quiet": True, "enable_file_urls": False}, max_bytes=10**7, max_duration=None)
    with pytest.raises(Exception) as e:
        dl.download(clip.as_uri(), str(tmp_path))
    assert isinstance(e.value, DownloadFailed) and e.value.status == "failed" and not e.value.retryable
    assert str(e.value) == "file:// URLs are disabled; set download.allow_file_urls: true to read local files"


def test_local_paths_pass_through(server, tmp_path):
    clip = tmp_path / "mine.mp4"
    clip.write_bytes(server.files["b.mp4"])
    stage = make_stage(tmp_path / "root")
    rows = [
        {"video_id": "file-1", "url": None, "path": str(clip)},
        {"video_id": "file-2", "url": None, "path": str(tmp_path / "missing.mp4")},
    ]
    out = {r["video_id"]: r for r in stage.process(pa.Table.from_pylist(rows)).to_pylist()}
    assert out["file-1"]["media"] == str(clip) and out["file-1"]["downloader"] == "local"
    assert out["file-2"]["status"] == "failed" and "not found" in out["file-2"]["error"]


def _ytdlp_errors():
    import io

    from yt_dlp.networking import Response
    from yt_dlp.networking.exceptions import HTTPError, TransportError
    from yt_dlp.utils import DownloadError, ExtractorError, GeoRestrictedError

    def wrapped(inner: BaseException) -> DownloadError:  # what YoutubeDL.report_error raises
        return DownloadError(f"ERROR: {inner}", exc_info=(type(inner), inner, None))

    too_many = HTTPError(
        Response(io.BytesIO(b""), "https://example.com/v", {}, status=429, reason="Too Many Requests")
    )
    return [
        (
            wrapped(
                ExtractorError(
                    "[youtube] aB3dE5fG7hJ: Sign in to confirm you\u2019re not a bot. Use "
                    "--cookies-from-browser or --cookies for the authentication."
                )
            ),
            "bot check",
        ),
        (
            wrapped(
                ExtractorError(
                    "[youtube] aB3dE5fG7hJ: Sign in to confirm your age. This video may be "
                    "inappropriate for some users."
                )
            ),
            "age-restricted",
        ),
        (
            wrapped(
                ExtractorError("[youtube] aB3dE5fG7hJ: Private video. Sign in if you've been granted access")
            ),
            "private video",
        ),
        (
            wrapped(GeoRestrictedError("The uploader has not made this video available in your country.")),
            "geo-restricted",
        ),
        (wrapped(too_many), "HTTP 429 Too Many Requests"),
        (TransportError("[Errno 111] Connection refused"), "connection refused"),
        (wrapped(ExtractorError("Requested format is not available. Use --list-formats")), "download.format"),
    ]


@pytest.mark.parametrize("error, words", _ytdlp_errors())
def test_ytdlp_exceptions_are_put_in_words(error, words):
    from stages.web.ytdlp_fetch import describe_error

    assert words in describe_error(error)
