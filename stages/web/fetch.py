"""The plain streaming HTTP path for direct media links (a media extension or a ``video/*`` body).

yt-dlp spends ~26 ms of Python per URL before the first byte (extractor matching, info dict,
format selection); a direct ``.mp4`` link needs none of it. Here one ``requests`` session per thread
streams the body to a file while hashing it, with the checks a crawler running for days needs: a
socket timeout between bytes (a stalled body fails instead of hanging), a wall-clock cap against
slow-drip servers, a size cap before and during the transfer, a redirect cap, robots opt-outs, and a
sniff of the first bytes so that an HTML page or an error text never passes for a video.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from contracts.status import machine_reason, transient
from stages.web.politeness import DEFAULT_OPT_OUTS, opt_out_reason
from stages.web.private_addresses import AddressGuard

CHUNK = 1 << 16
HEAD_BYTES = 1 << 16  # what is sniffed (and searched for robots <meta>) before deciding
MAX_RETRY_AFTER_S = 60.0
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


class FetchFailed(Exception):
    """A direct download that did not produce a video; ``reason`` is meant for the manifest."""

    def __init__(
        self, reason: str, *, status: str = "failed", retryable: bool = False, retry_after: float = 0.0
    ):
        super().__init__(reason)
        self.reason, self.status, self.retryable, self.retry_after = reason, status, retryable, retry_after


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
    retries: int = 3
    backoff_s: float = 1.0
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
            raise FetchFailed(f"redirect {problem}")
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
    """Stream ``url`` into ``dest`` with retries; ``PageNotMedia`` when it is a page and ``page_ok``."""
    if problem := policy.guard.problem(url):
        raise FetchFailed(problem)
    attempt = 0
    while True:
        try:
            return _fetch_once(session_for(policy), url, dest, policy, page_ok)
        except FetchFailed as e:
            if not e.retryable or attempt >= policy.retries:
                if attempt:
                    e.reason += f" (after {attempt + 1} attempts)"
                    e.args = (e.reason,)
                raise
            attempt += 1
            time.sleep(max(e.retry_after, policy.backoff_s * 2 ** (attempt - 1)))


def redirects_problem(url: str, policy: HttpPolicy) -> str | None:
    """Why following ``url``'s redirects reaches a refused address, or None (any other failure is left
    to the download itself). A streamed GET whose body is never read: servers answer GET more
    reliably than HEAD."""
    try:
        with session_for(policy).get(
            url, stream=True, timeout=(policy.socket_timeout, policy.socket_timeout)
        ):
            return None
    except FetchFailed as e:
        return e.reason
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError):
        return None


def _retry_after(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        seconds = when.timestamp() - time.time() if when else 0.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _fetch_once(session: requests.Session, url: str, dest: str, policy: HttpPolicy, page_ok: bool) -> Fetched:
    started = time.monotonic()
    received = 0
    try:
        with session.get(url, stream=True, timeout=(policy.socket_timeout, policy.socket_timeout)) as r:
            ctype = r.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
            if r.status_code >= 400:
                code = r.status_code
                raise FetchFailed(
                    f"HTTP {code} {r.reason or ''}".strip(),
                    retryable=code in (408, 429) or code >= 500,
                    retry_after=_retry_after(r.headers.get("Retry-After")),
                )
            header_list = list(r.raw.headers.items())
            if reason := opt_out_reason(header_list, policy.robots_agent, policy.opt_outs):
                raise FetchFailed(reason, status="filtered")
            length = r.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > policy.max_bytes:
                raise FetchFailed(
                    f"file larger than the size cap ({int(length) / 1e6:.1f} MB > "
                    f"{policy.max_bytes / 1e6:.1f} MB, from Content-Length)",
                    status="filtered",
                )
            chunks = _body(r, started, policy)
            head = b""
            for chunk in chunks:  # read until the sniff has enough bytes (or the body ends)
                head += chunk
                if len(head) >= 512:
                    break
            kind = sniff(head)
            if kind == "html" or ctype in PAGE_TYPES or (kind is None and ctype.startswith("text/")):
                if page_ok:
                    if reason := opt_out_reason(
                        [], policy.robots_agent, policy.opt_outs, page_head=head[:HEAD_BYTES]
                    ):
                        raise FetchFailed(reason, status="filtered")
                    raise PageNotMedia(ctype)
                raise FetchFailed(
                    f"not a video: the server sent a page ({ctype or 'no content type'}) instead of a video"
                )
            if not head:
                raise FetchFailed(f"empty response body (HTTP {r.status_code}, {ctype or 'no content type'})")
            if kind is None:
                raise FetchFailed(
                    f"not a video: the first bytes match no known video container "
                    f"(content type {ctype or 'none'})"
                )
            digest = hashlib.sha256()
            with open(dest, "wb") as f:
                for chunk in _prepend(head, chunks):
                    received += len(chunk)
                    if received > policy.max_bytes:
                        raise FetchFailed(
                            f"file larger than the size cap (over {policy.max_bytes / 1e6:.1f} MB "
                            f"while streaming)",
                            status="filtered",
                        )
                    digest.update(chunk)
                    f.write(chunk)
            ext = media_extension(r.url) or CONTENT_TYPE_EXT.get(ctype) or kind
            keep = ("Content-Type", "Content-Length", "ETag", "Last-Modified", "Server")
            return Fetched(
                received,
                digest.hexdigest(),
                ext,
                ctype,
                r.url,
                r.status_code,
                {k: r.headers[k] for k in keep if k in r.headers},
            )
    except (FetchFailed, PageNotMedia):
        raise
    except requests.TooManyRedirects:
        raise FetchFailed(f"redirect loop: more than {policy.max_redirects} redirects") from None
    except requests.exceptions.InvalidSchema as e:
        raise FetchFailed(f"redirected to an unsupported URL scheme ({e})") from None
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, UnicodeError) as e:
        raise FetchFailed(f"malformed URL: {e}") from None
    except requests.exceptions.ConnectTimeout:
        raise FetchFailed(f"connection timed out after {policy.socket_timeout:g} s", retryable=True) from None
    except (
        requests.exceptions.ReadTimeout,
        requests.exceptions.ConnectionError,
        requests.exceptions.ChunkedEncodingError,
        urllib3.exceptions.HTTPError,
    ) as e:
        raise FetchFailed(
            describe_transport_error(e, received, policy.socket_timeout), retryable=True
        ) from None
    except OSError as e:  # writing dest: a full disk or a permission is the machine's, retried on a rerun
        words = machine_reason(e)
        raise FetchFailed(
            transient(f"{words} while writing the download")
            if words
            else f"could not write the download: {e.strerror or type(e).__name__}"
        ) from None


def _body(r: requests.Response, started: float, policy: HttpPolicy) -> Iterator[bytes]:
    """The body as it arrives: ``read1`` returns what one socket read gave, so that the wall-clock cap
    is checked even against a server that drips a byte at a time (a full-size read would wait on)."""
    while chunk := r.raw.read1(CHUNK):
        if time.monotonic() - started > policy.max_seconds:
            raise FetchFailed(f"download too slow: over {policy.max_seconds:g} s (max_download_s)")
        yield chunk


def _prepend(head: bytes, rest: Any) -> Any:
    yield head
    yield from rest


def describe_transport_error(e: BaseException, received: int, timeout: float) -> str:
    """Words for a network failure: refused, reset, stalled (timed out), cut short."""
    text = " ".join(str(a) for a in _chain(e))
    low = text.lower()
    if "timed out" in low or "timeout" in low:
        if received:
            return f"stalled: no data for {timeout:g} s (socket_timeout) after {received} bytes"
        return f"timed out: no response for {timeout:g} s (socket_timeout)"
    if "refused" in low:
        return "connection refused"
    if "incompleteread" in low or "incomplete read" in low or "connection broken" in low:
        return f"connection closed before the body was complete ({received} bytes received)"
    if "name or service not known" in low or "nodename nor servname" in low or "getaddrinfo" in low:
        return "host name could not be resolved"
    if "reset" in low:
        return "connection reset by the server"
    return f"network error: {type(e).__name__}: {text[:200]}"


def _chain(e: BaseException) -> list[BaseException]:
    out, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        out.append(e)
        e = (
            e.__cause__
            or e.__context__
            or (e.args[0] if e.args and isinstance(e.args[0], BaseException) else None)
        )
    return out


def remove_quietly(path: str) -> None:
    """Delete a temp file if it exists; a failure (a read-only disk) must not hide the error that led
    here, and the next start removes what is left (``MediaDir.remove_stale``)."""
    try:
        os.remove(path)
    except OSError:
        pass
