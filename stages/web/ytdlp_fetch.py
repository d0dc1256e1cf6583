"""The yt-dlp path: pages that need an extractor (YouTube and the other sites yt-dlp knows), and
``file://`` URLs when the config allows them.

One ``YoutubeDL`` per thread, reused for every download of that thread (making one costs ~130 ms
and a reused one keeps its extractors and connections). Each download extracts first, checks what
the info says (playlist, live, duration, size), then downloads the chosen format into a directory the
caller owns, under a name the caller chose: nothing from the remote side ever names a file.

yt-dlp signals problems in several ways: ``DownloadError`` wrapping the real cause, bare
``RequestError`` / ``TransportError`` from its networking layer (a ``file://`` URL without
``enable_file_urls`` raises ``RequestError``), or a message and no file (``max_filesize``).
``ytdlp_failure`` turns each into a ``DownloadFailed`` worded as the direct path words the same
failure (``stages.web.failures``), so the ``error`` column does not say which path fetched the URL.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stages.base import RowError, RowFiltered
from stages.web import failures
from stages.web.failures import DownloadFailed, exception_chain
from stages.web.private_addresses import AddressGuard
from stages.web.retry import RetryPolicy, retry_after_seconds

ANSI = re.compile(r"\x1b\[[0-9;]*m")
INFO_FIELDS = (
    "id",
    "extractor",
    "extractor_key",
    "webpage_url",
    "original_url",
    "title",
    "duration",
    "width",
    "height",
    "fps",
    "vcodec",
    "acodec",
    "tbr",
    "vbr",
    "abr",
    "format_note",
    "resolution",
    "filesize",
    "filesize_approx",
    "uploader",
    "uploader_id",
    "channel",
    "channel_id",
    "upload_date",
    "timestamp",
    "license",
    "tags",
    "categories",
    "view_count",
    "like_count",
    "comment_count",
    "age_limit",
    "availability",
    "live_status",
    "language",
    "aspect_ratio",
)
MAX_DESCRIPTION = 5000
GENERIC_EXTRACTORS = frozenset({"Generic", "HTML5MediaEmbed"})  # media URLs named by an arbitrary page
MAX_PROBED_URLS = 4
# requests' own limit, which yt-dlp's requests handler keeps (download.max_redirects is the direct path's)
YTDLP_MAX_REDIRECTS = 30
# yt-dlp's words for its own limits and retries, read back into numbers
MAX_FILESIZE = re.compile(r"larger than max-filesize \((\d+) bytes > (\d+) bytes\)")
GAVE_UP = re.compile(r"giving up after (\d+) retries")
# Phrases in yt-dlp's messages, and what a user should read instead.
KNOWN_MESSAGES = (
    ("sign in to confirm your age", "age-restricted: needs a signed-in session (download.cookies_file)"),
    (
        "sign in to confirm you",
        "the site asks to sign in (bot check); set download.cookies_file "
        "(see docs/crawl.md) or lower the request rate",
    ),
    ("private video", "private video"),
    ("members-only", "members-only video"),
    ("video unavailable", "video unavailable (removed or blocked)"),
    ("this video has been removed", "video removed"),
    ("available in your country", "geo-restricted in this country"),
    ("requested format is not available", "no format matches download.format"),
    ("unsupported url", "no video found at this URL (no extractor and no embedded video)"),
    ("no video formats found", "no video found on the page"),
    ("js runtime", "yt-dlp needs a JavaScript runtime for this site (see docs/crawl.md)"),
    (  # worded as contracts.video_ids.url_problem words it before any path is chosen
        "file:// urls are disabled",
        "file:// URLs are disabled; set download.allow_file_urls: true to read local files",
    ),
)


def extractor_for(url: str) -> str:
    """The key of the first yt-dlp extractor that takes ``url`` (yt-dlp's own order; no request)."""
    from yt_dlp.extractor import gen_extractor_classes

    return next((ie.ie_key() for ie in gen_extractor_classes() if ie.suitable(url)), "Generic")


class CollectingLogger:
    """A yt-dlp logger that keeps the last messages of this thread instead of printing them."""

    def __init__(self, keep: int = 20):
        self.messages: deque[str] = deque(maxlen=keep)

    def debug(self, msg: str) -> None:
        self.messages.append(ANSI.sub("", msg))

    info = warning = error = debug


@dataclass
class YtdlpResult:
    """The file yt-dlp wrote and what it said about it."""

    path: str
    info: dict[str, Any]


def info_subset(info: dict[str, Any]) -> dict[str, Any]:
    """The info fields worth keeping in the manifest (JSON-safe, description bounded)."""
    out = {k: info.get(k) for k in INFO_FIELDS if info.get(k) is not None}
    if info.get("description"):
        out["description"] = str(info["description"])[:MAX_DESCRIPTION]
    return json.loads(json.dumps(out, default=str))


def describe_error(e: BaseException) -> str:
    """One line saying what went wrong, from a yt-dlp exception and the causes chained to it."""
    return ytdlp_failure(e).reason


def ytdlp_failure(e: BaseException, socket_timeout: float | None = None, received: int = 0) -> DownloadFailed:
    """The failure a yt-dlp exception stands for; ``received``: body bytes seen before it broke off."""
    failure = failures.machine_failure(e, "while writing the download") or _classify(
        e, socket_timeout, received
    )
    if gave_up := GAVE_UP.search(" ".join(ANSI.sub("", str(c)).lower() for c in exception_chain(e))):
        failure.after_attempts(int(gave_up.group(1)) + 1)  # yt-dlp retried the transfer itself
    return failure


def _classify(e: BaseException, socket_timeout: float | None, received: int) -> DownloadFailed:
    from yt_dlp.networking.exceptions import HTTPError, TransportError

    chain = exception_chain(e)
    for c in chain:
        if isinstance(c, HTTPError):
            if 300 <= c.status < 400 or getattr(c, "redirect_loop", False):  # requests gave up following
                return failures.redirect_loop(YTDLP_MAX_REDIRECTS)
            retry_after = (
                retry_after_seconds(c.response.headers.get("Retry-After")) if c.response is not None else 0.0
            )
            return failures.http_status(c.status, c.reason or "", retry_after)
    texts = [ANSI.sub("", str(c)).lower() for c in chain]
    for t in texts:  # the outermost message first: its causes are often more generic
        for phrase, words in KNOWN_MESSAGES:
            if phrase in t:
                return DownloadFailed(words)
    low = " ".join(texts)
    if "did not get any data blocks" in low:
        return failures.empty_body()
    if "redirect" in low and ("loop" in low or "too many" in low):
        return failures.redirect_loop(YTDLP_MAX_REDIRECTS)
    if any(isinstance(c, (TransportError, TimeoutError, ConnectionError)) for c in chain):
        return failures.transport_failure(e, received, socket_timeout)
    if "timed out" in low:
        return failures.stalled(socket_timeout, received) if received else failures.timed_out(socket_timeout)
    message = ANSI.sub("", str(e)).removeprefix("ERROR: ").strip() or type(e).__name__
    return DownloadFailed(f"yt-dlp: {message}")


class YtdlpDownloader:
    """Downloads through yt-dlp with one ``YoutubeDL`` per thread, kept for the process's life."""

    def __init__(
        self,
        params: dict[str, Any],
        *,
        max_bytes: int,
        max_duration: float | None,
        max_seconds: float = 300.0,
        retry: RetryPolicy | None = None,
        guard: AddressGuard | None = None,
        redirects_problem: Callable[[str], str | None] | None = None,
    ):
        self.params, self.max_bytes, self.max_duration = params, max_bytes, max_duration
        self.max_seconds, self.retry = max_seconds, retry or RetryPolicy(retries=0)
        self.socket_timeout: float | None = params.get("socket_timeout")
        self.guard = guard or AddressGuard(allow_all=True)
        self.redirects_problem = redirects_problem  # url -> why its redirects are refused, or None
        self._local = threading.local()

    def _client(self) -> tuple[Any, CollectingLogger]:
        if not hasattr(self._local, "ydl"):
            import yt_dlp

            logger = CollectingLogger()
            params = {**self.params, "logger": logger, "progress_hooks": [self._guard]}
            self._local.ydl, self._local.logger = yt_dlp.YoutubeDL(params), logger
        return self._local.ydl, self._local.logger

    def _guard(self, d: dict[str, Any]) -> None:
        # yt-dlp applies max_filesize only when a Content-Length is sent, and has no wall-clock cap
        # (a server sending a byte now and then keeps its socket timeout from firing): both are here.
        if d.get("status") != "downloading":
            return
        self._local.received = d.get("downloaded_bytes") or 0  # for the words of a stalled body
        if self._local.received > self.max_bytes:
            raise failures.too_large_streaming(self.max_bytes)
        if (d.get("elapsed") or 0) > self.max_seconds:
            raise failures.too_slow(self.max_seconds)

    def _failure(self, e: BaseException) -> DownloadFailed:
        return ytdlp_failure(e, self.socket_timeout, getattr(self._local, "received", 0))

    def download(self, url: str, out_dir: str) -> YtdlpResult:
        """Extract and download one video into ``out_dir`` as ``media.<ext>``; RowError on any problem."""
        ydl, logger = self._client()
        logger.messages.clear()
        self._local.received = 0
        ydl.params["outtmpl"] = {"default": os.path.join(out_dir.replace("%", "%%"), "media.%(ext)s")}
        try:
            self._check_start(url)
            info = self.retry.call(lambda: self._extract(ydl, url))
            if not info:
                raise RowError(f"yt-dlp found nothing: {self._last(logger)}")
            self._check_before_download(info)
            self._check_addresses(info)
            info = ydl.process_ie_result(info, download=True)
        except RowError:
            raise
        except Exception as e:  # yt-dlp raises many types; each becomes words, never a crash
            raise self._failure(e) from None
        path = next(
            (d.get("filepath") for d in info.get("requested_downloads") or [] if d.get("filepath")), None
        )
        if not path or not os.path.exists(path):
            last = self._last(logger)
            if m := MAX_FILESIZE.search(last.lower()):
                raise failures.too_large(int(m.group(1)), self.max_bytes, "Content-Length")
            raise RowError(f"yt-dlp wrote no file: {last or 'no message'}")
        return YtdlpResult(path, info)

    def _extract(self, ydl: Any, url: str) -> dict[str, Any] | None:
        # yt-dlp retries the media transfer itself (``retries``) but not most page fetches: a 5xx
        # or a timeout while extracting is retried (``self.retry``), by the rule of the direct path.
        try:
            return ydl.extract_info(url, download=False)
        except Exception as e:
            raise self._failure(e) from None

    def _check_start(self, url: str) -> None:
        # yt-dlp fetches the page itself, following its redirects unchecked. A URL only the generic
        # extractor takes (any web page, not a site yt-dlp knows) has its redirects followed here first,
        # through the checked session, as the direct path follows every hop; a site's extractor calls
        # that site's own hosts.
        if self.redirects_problem is None or not url.lower().startswith(("http://", "https://")):
            return
        if extractor_for(url) in GENERIC_EXTRACTORS and (problem := self.redirects_problem(url)):
            raise failures.refused_address(problem)

    def _check_before_download(self, info: dict[str, Any]) -> None:
        kind = info.get("_type", "video")
        if kind in ("playlist", "multi_video"):
            n = info.get("playlist_count") or len(info.get("entries") or [])
            raise RowError(f"the URL is a playlist ({n} entries), not one video; list the videos' own URLs")
        if info.get("is_live") or info.get("live_status") in ("is_live", "is_upcoming"):
            raise RowFiltered(f"live stream ({info.get('live_status') or 'is_live'}): not a finished video")
        duration = info.get("duration")
        if self.max_duration is not None and duration and duration > self.max_duration:
            raise RowFiltered(
                f"duration {duration:.1f} s over the cap of {self.max_duration:g} s (from metadata)"
            )
        size = info.get("filesize") or info.get("filesize_approx")
        if size and size > self.max_bytes:
            raise failures.too_large(size, self.max_bytes, "metadata")

    def _check_addresses(self, info: dict[str, Any]) -> None:
        # A public page may point its <video> (or its manifest) at a private address: every URL the
        # extractor found is checked before yt-dlp fetches any of them.
        urls = [info.get("url"), info.get("manifest_url")]
        for f in info.get("formats") or []:
            urls += [f.get("url"), f.get("manifest_url"), f.get("fragment_base_url")]
        found = list(dict.fromkeys(u for u in urls if isinstance(u, str)))
        for url in found:
            if problem := self.guard.problem(url):
                raise failures.refused_address(problem, via="the page's media URL was ")
        # yt-dlp follows redirects inside its own downloader, unchecked: for media a generic page named
        # (not a site's API), the redirects are followed here first, through the checked session.
        if self.redirects_problem is not None and info.get("extractor_key") in GENERIC_EXTRACTORS:
            for url in [u for u in found if u.lower().startswith(("http://", "https://"))][:MAX_PROBED_URLS]:
                if problem := self.redirects_problem(url):
                    raise failures.refused_address(problem, via="the page's media URL: ")

    @staticmethod
    def _last(logger: CollectingLogger) -> str:
        return " | ".join(list(logger.messages)[-2:])
