"""Stable ``video_id``s, canonical URLs and URL checks: the identity that dedup, resume and joins use.

The same video reached by different URLs must get one id, so that a video found by two search terms,
listed twice in a URL list, or present both in VIDAL-10M and a list is fetched once:

- YouTube URLs in any form (``watch?v=``, ``youtu.be/``, ``/shorts/``, ``/embed/``, ``/live/``)
  become ``youtube-{id}``;
- ``file://`` URLs and local paths become ``file-{sha1(absolute path)[:16]}``;
- any other URL becomes ``url-{sha1(canonical URL)[:16]}``, where the canonical form has a lower-case
  scheme and host, no default port, no fragment and no tracking parameters.

Ids only hold ``[A-Za-z0-9_-]`` and at most 64 characters; none carries remote text beyond a
validated YouTube id.
"""

from __future__ import annotations

import hashlib
import os
import re
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

YOUTUBE_HOSTS = frozenset(
    {
        "youtube.com",
        "www.youtube.com",
        "m.youtube.com",
        "music.youtube.com",
        "youtube-nocookie.com",
        "www.youtube-nocookie.com",
    }
)
YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
YOUTUBE_PATH_ID = re.compile(r"^/(?:shorts|embed|live|v|e)/([A-Za-z0-9_-]{11})(?:[/?#]|$)")
# Query parameters that only track where a link was shared from; they never select the content.
TRACKING_PARAMS = frozenset({"fbclid", "gclid", "dclid", "msclkid", "igshid", "mc_cid", "mc_eid", "_ga"})
DEFAULT_PORTS = {"http": 80, "https": 443}


def sha1_id(prefix: str, text: str) -> str:
    """``{prefix}-{sha1(text)[:16]}``: a stable id that never carries the text itself."""
    return f"{prefix}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:16]}"


def youtube_id(url: str) -> str | None:
    """The 11-character YouTube id of a YouTube video URL, or None for any other URL."""
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower()
    except ValueError:
        return None
    if host == "youtu.be":
        candidate = parts.path.lstrip("/").split("/", 1)[0]
        return candidate if YOUTUBE_ID.match(candidate) else None
    if host not in YOUTUBE_HOSTS:
        return None
    if parts.path in ("/watch", "/watch/"):
        candidate = dict(parse_qsl(parts.query)).get("v", "")
        return candidate if YOUTUBE_ID.match(candidate) else None
    m = YOUTUBE_PATH_ID.match(parts.path)
    return m.group(1) if m else None


def youtube_url(vid: str) -> str:
    """The canonical watch URL of a YouTube id."""
    return f"https://www.youtube.com/watch?v={vid}"


def file_url_path(url: str) -> str:
    """The absolute local path of a ``file://`` URL (percent-escapes decoded, normalised)."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"file URL with a remote host is not supported: {url}")
    return os.path.normpath(unquote(parts.path))


def canonical_url(url: str) -> str:
    """A canonical form of ``url`` for dedup; YouTube URLs collapse to their watch URL."""
    url = url.strip()
    vid = youtube_id(url)
    if vid:
        return youtube_url(vid)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return "file://" + file_url_path(url)
    host = (parts.hostname or "").lower()
    if parts.port and parts.port != DEFAULT_PORTS.get(scheme):
        host = f"{host}:{parts.port}"
    if parts.username:
        host = f"{parts.username}{':' + parts.password if parts.password else ''}@{host}"
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k not in TRACKING_PARAMS and not k.startswith("utm_")
    ]
    return urlunsplit((scheme, host, parts.path or "/", urlencode(query, doseq=True), ""))


def video_id_for_path(path: str) -> str:
    """The id of a local file (or object-store URI) listed by path."""
    return sha1_id("file", path)


def video_id_for_url(url: str) -> str:
    """The id of a video URL: ``youtube-{id}``, ``file-…`` for ``file://``, else ``url-…``."""
    vid = youtube_id(url)
    if vid:
        return f"youtube-{vid}"
    canon = canonical_url(url)
    if canon.startswith("file://"):
        return video_id_for_path(canon[len("file://") :])
    return sha1_id("url", canon)


def url_problem(url: str, allow_file_urls: bool) -> str | None:
    """Why a URL must not be fetched (malformed, unsupported scheme, file:// not enabled), or None."""
    if any(c.isspace() or ord(c) < 32 for c in url):
        return "malformed URL: it contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        return f"malformed URL: {e}"
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return None if parts.hostname else "malformed URL: no host name"
    if scheme == "file":
        if not allow_file_urls:
            return "file:// URLs are disabled; set download.allow_file_urls: true to read local files"
        return None if parts.netloc in ("", "localhost") else "file:// URL with a remote host"
    if not scheme:
        return "malformed URL: no scheme (expected http:// or https://)"
    return f"unsupported URL scheme {scheme!r}: only http and https (file with download.allow_file_urls)"
