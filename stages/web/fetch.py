"""The plain streaming HTTP path for direct media links (a media extension or a ``video/*`` body).

yt-dlp spends ~26 ms of Python per URL before the first byte (extractor matching, info dict,
format selection); a direct ``.mp4`` link needs none of it. Here one ``requests`` session per thread
streams the body to a file while hashing it, with the checks a crawler running for days needs: a
socket timeout between bytes (a stalled body fails instead of hanging), a wall-clock cap against
slow-drip servers, a size cap before and during the transfer, a redirect cap, robots opt-outs, and a
sniff of the first bytes so that an HTML page or an error text never passes for a video. Each
failure is a ``DownloadFailed`` from ``stages.web.failures`` and is retried by ``stages.web.retry``,
exactly as on the yt-dlp path, so the manifest does not tell the two paths apart.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from stages.web import failures
from stages.web.failures import DownloadFailed
from stages.web.politeness import DEFAULT_OPT_OUTS, opt_out_reason
from stages.web.private_addresses import AddressGuard
from stages.web.retry import RetryPolicy, retry_after_seconds

CHUNK = 1 << 16
HEAD_BYTES = 1 << 16  # what is sniffed (and searched for robots <meta>) before deciding
MEDIA_EXTENSIONS = frozenset(
    {"mp4", "m4v", "mov", "webm", "mkv", "avi", "ogv", "3gp", "flv", "ts", "mpg", "mpeg", "wmv"}
)
CONTENT_TYPE_EXT = {
    "video/mp4": "mp4",
    "video/webm": "webm",
    "video/quicktime": "mov",
    "video/x-matroska": "mkv",
    "video/x-msvideo": "avi",
    "video/ogg": "ogv",
    "video/3gpp": "3gp",
    "video/x-flv": "flv",
    "video/mp2t": "ts",
    "video/mpeg": "mpg",
    "video/x-ms-wmv": "wmv",
    "application/mp4": "mp4",
}
PAGE_TYPES = ("text/html", "application/xhtml+xml")
# ISO-BMFF / QuickTime top-level boxes that may open an MP4 or MOV file.
MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")


class PageNotMedia(Exception):
    """The URL serves a web page, not a video: an extractor (yt-dlp) may find the video in it."""

    def __init__(self, content_type: str):
        super().__init__(f"the URL serves a page ({content_type or 'no content type'}), not a video")
        self.content_type = content_type


@dataclass(frozen=True)
class HttpPolicy:
    """Limits and manners of the direct path (from the download stage's config)."""

    socket_timeout: float = 20.0
    max_bytes: int = 200_000_000
    max_seconds: float = 300.0
    max_redirects: int = 10
    retry: RetryPolicy = RetryPolicy()
    user_agent: str = "vidal-crawler/0.1"
    robots_agent: str = "vidal"
    opt_outs: tuple[str, ...] = DEFAULT_OPT_OUTS
    guard: AddressGuard = AddressGuard()  # which addresses a URL (and each redirect) may resolve to


@dataclass
class Fetched:
    """What a direct download wrote and learned."""

    bytes: int
    sha256: str
    ext: str
    content_type: str
    final_url: str
    http_status: int
    headers: dict[str, str] = field(default_factory=dict)


def media_extension(url: str) -> str | None:
    """The video extension of a URL's path (``.mp4``, ``.webm``…), or None."""
    path = urlsplit(url).path.lower()
    ext = path.rsplit(".", 1)[-1] if "." in path.rsplit("/", 1)[-1] else ""
    return ext if ext in MEDIA_EXTENSIONS else None


def sniff(head: bytes) -> str | None:
    """The container a file starts with (an extension), ``"html"`` for markup, or None if unknown."""
    if len(head) >= 8 and head[4:8] in MP4_BOXES:
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm" if b"webm" in head[:64] else "mkv"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"OggS"):
        return "ogv"
    if head.startswith(b"FLV"):
        return "flv"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return "wmv"
    if head.startswith(b"\x00\x00\x01\xba") or head.startswith(b"\x00\x00\x01\xb3"):
        return "mpg"
    if len(head) > 376 and head[0] == 0x47 and head[188] == 0x47 and head[376] == 0x47:
        return "ts"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"<!--", b"<")):
        return "html"
    return None


_sessions = threading.local()


class GuardedSession(requests.Session):
    """A session that checks every redirect target against the address guard before following it."""

    guard: AddressGuard = AddressGuard()

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        target = super().get_redirect_target(resp)
        if target and (problem := self.guard.problem(urljoin(resp.url, target))):
            raise failures.refused_address(problem, via="redirect ")
        return target


def session_for(policy: HttpPolicy, pool_size: int = 32) -> requests.Session:
    """This thread's session (keep-alive connections reused across downloads)."""
    s = getattr(_sessions, "session", None)
    if s is None or getattr(_sessions, "policy", None) != policy:
        s = GuardedSession()
        s.guard = policy.guard
        adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        s.max_redirects = policy.max_redirects
        s.headers.update({"User-Agent": policy.user_agent, "Accept-Encoding": "identity"})
        _sessions.session, _sessions.policy = s, policy
    return s


def fetch_media(url: str, dest: str, policy: HttpPolicy, *, page_ok: bool = False) -> Fetched:
    """Stream ``url`` into ``dest`` with retries; ``PageNotMedia`` when it is a page and ``page_ok``.

    Raises ``DownloadFailed`` (``stages.web.failures``) with the manifest reason otherwise."""
    if problem := policy.guard.problem(url):
        raise failures.refused_address(problem)
    return policy.retry.call(lambda: _fetch_once(session_for(policy), url, dest, policy, page_ok))


def redirects_problem(url: str, policy: HttpPolicy) -> str | None:
    """Why following ``url``'s redirects reaches a refused address, or None (any other failure is left
    to the download itself). A streamed GET whose body is never read: servers answer GET more
    reliably than HEAD."""
    try:
        with session_for(policy).get(
            url, stream=True, timeout=(policy.socket_timeout, policy.socket_timeout)
        ):
            return None
    except DownloadFailed as e:
        return e.reason
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError):
        return None


@dataclass
class _Transfer:
    """One attempt's progress: what the failure words need to know when the body breaks off."""

    started: float
    received: int = 0


def _fetch_once(session: requests.Session, url: str, dest: str, policy: HttpPolicy, page_ok: bool) -> Fetched:
    transfer = _Transfer(started=time.monotonic())
    timeout = (policy.socket_timeout, policy.socket_timeout)
    try:
        with session.get(url, stream=True, timeout=timeout) as r:
            ctype = r.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
            _check_response(r, policy)
            chunks = _body(r, transfer.started, policy)
            head = _read_head(chunks)
            kind = _check_head(head, ctype, policy, page_ok)
            digest = _write(dest, _prepend(head, chunks), transfer, policy)
            keep = ("Content-Type", "Content-Length", "ETag", "Last-Modified", "Server")
            return Fetched(
                transfer.received,
                digest,
                media_extension(r.url) or CONTENT_TYPE_EXT.get(ctype) or kind,
                ctype,
                r.url,
                r.status_code,
                {k: r.headers[k] for k in keep if k in r.headers},
            )
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, UnicodeError) as e:
        raise _request_failure(e, transfer.received, policy) from None


def _check_response(r: requests.Response, policy: HttpPolicy) -> None:
    """What the status line and headers alone rule out: an error status, an opt-out, a declared size."""
    if r.status_code >= 400:
        raise failures.http_status(r.status_code, r.reason, retry_after_seconds(r.headers.get("Retry-After")))
    if reason := opt_out_reason(list(r.raw.headers.items()), policy.robots_agent, policy.opt_outs):
        raise failures.opted_out(reason)
    length = r.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > policy.max_bytes:
        raise failures.too_large(int(length), policy.max_bytes, "Content-Length")


def _read_head(chunks: Iterator[bytes]) -> bytes:
    """The body's first bytes, enough to sniff (or all of it, when shorter)."""
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= 512:
            break
    return head


def _check_head(head: bytes, ctype: str, policy: HttpPolicy, page_ok: bool) -> str:
    """The container the first bytes show; a page is ``PageNotMedia`` (when ``page_ok``: yt-dlp may
    find the video in it, unless the page opts out) or a failure, and so is an unknown format."""
    kind = sniff(head)
    if kind == "html" or ctype in PAGE_TYPES or (kind is None and ctype.startswith("text/")):
        if not page_ok:
            raise failures.page_not_video(ctype)
        if reason := opt_out_reason([], policy.robots_agent, policy.opt_outs, page_head=head[:HEAD_BYTES]):
            raise failures.opted_out(reason)
        raise PageNotMedia(ctype)
    return container_of(head)


def container_of(head: bytes) -> str:
    """The video container a body's first bytes show (an extension); ``DownloadFailed`` when the body
    is empty, markup or no known container. Both paths check what they received with it."""
    if not head:
        raise failures.empty_body()
    kind = sniff(head)
    if kind == "html":
        raise failures.page_not_video("text/html")
    if kind is None:
        raise failures.unknown_container()
    return kind


def _write(dest: str, chunks: Iterable[bytes], transfer: _Transfer, policy: HttpPolicy) -> str:
    """Write the body to ``dest`` within the size cap; its sha256."""
    digest = hashlib.sha256()
    with open(dest, "wb") as f:
        for chunk in chunks:
            transfer.received += len(chunk)
            if transfer.received > policy.max_bytes:
                raise failures.too_large_streaming(policy.max_bytes)
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


def _request_failure(e: BaseException, received: int, policy: HttpPolicy) -> DownloadFailed:
    """The failure an exception of ``requests`` (or of writing ``dest``) stands for."""
    if isinstance(e, requests.TooManyRedirects):
        return failures.redirect_loop(policy.max_redirects)
    if isinstance(e, requests.exceptions.InvalidSchema):
        return DownloadFailed(f"redirected to an unsupported URL scheme ({e})")
    if isinstance(e, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, UnicodeError)):
        return DownloadFailed(f"malformed URL: {e}")
    transport = (
        requests.exceptions.Timeout,
        requests.exceptions.ConnectionError,
        requests.exceptions.ChunkedEncodingError,
        urllib3.exceptions.HTTPError,
    )
    if isinstance(e, transport):
        return failures.transport_failure(e, received, policy.socket_timeout)
    # writing dest: a full disk or a permission is the machine's, retried on a rerun
    machine = failures.machine_failure(e, "while writing the download")
    return machine or DownloadFailed(
        f"could not write the download: {getattr(e, 'strerror', None) or type(e).__name__}"
    )


def _body(r: requests.Response, started: float, policy: HttpPolicy) -> Iterator[bytes]:
    """The body as it arrives: ``read1`` returns what one socket read gave, so that the wall-clock cap
    is checked even against a server that drips a byte at a time (a full-size read would wait on)."""
    while chunk := r.raw.read1(CHUNK):
        if time.monotonic() - started > policy.max_seconds:
            raise failures.too_slow(policy.max_seconds)
        yield chunk


def _prepend(head: bytes, rest: Iterable[bytes]) -> Iterator[bytes]:
    yield head
    yield from rest


def remove_quietly(path: str) -> None:
    """Delete a temp file if it exists; a failure (a read-only disk) must not hide the error that led
    here, and the next start removes what is left (``MediaDir.remove_stale``)."""
    try:
        os.remove(path)
    except OSError:
        pass
