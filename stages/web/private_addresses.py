"""Refusing URLs that resolve to addresses a crawler on a cloud machine must never fetch.

A URL list from the web can name ``http://169.254.169.254/latest/meta-data/…`` (the metadata service
that hands out a cloud machine's credentials), ``http://10.0.0.5/admin`` or ``http://localhost:6379``,
directly or behind a redirect from a public host; the download stage would copy the answer into a
dataset. So every host is resolved and each of its addresses checked before a request is made, at the
first request and at every redirect on the direct path, and before a URL (or a media URL an extractor
found in a page, whose redirects are followed first when a generic page named it) is handed to yt-dlp.
Loopback, private, link-local, multicast, unspecified and other non-public addresses are refused
unless ``download.allow_private_addresses`` is true (tests, on-premise crawls) or lists the networks
allowed (``[10.1.0.0/16]``).

What this does not cover: a host whose DNS answer changes between our check and the connection
(DNS rebinding), and a redirect that yt-dlp's downloader meets on media a site extractor (YouTube,
Vimeo, ...) found, which is not probed in advance.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
SETTING = "download.allow_private_addresses"


def address_kind(ip: Address) -> str | None:
    """What makes an address off-limits ("loopback", "link-local", ...), or None for a public one."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind, hit in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
    ):
        if hit:
            return kind
    return None if ip.is_global else "non-public"


@dataclass(frozen=True)
class AddressGuard:
    """Which addresses URLs may resolve to: public ones, plus ``allowed`` networks (all when ``allow_all``)."""

    allow_all: bool = False
    allowed: tuple[str, ...] = ()

    @classmethod
    def from_setting(cls, value: bool | list[str]) -> AddressGuard:
        return cls(allow_all=True) if value is True else cls(allowed=tuple(value or ()))

    def _permitted(self, ip: Address) -> bool:
        return any(ip in ipaddress.ip_network(n, strict=False) for n in self.allowed)

    def problem(self, url: str) -> str | None:
        """Why ``url`` must not be fetched (its host resolves to an off-limits address), or None."""
        if self.allow_all:
            return None
        parts = urlsplit(url)
        host = parts.hostname
        if parts.scheme.lower() not in ("http", "https") or not host:
            return None  # file:// and malformed URLs are someone else's call
        try:
            port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError, ValueError):
            return None  # unresolvable: the request itself will say so
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            kind = address_kind(ip)
            if kind and not self._permitted(ip):
                where = str(ip) if host.strip("[]") == str(ip) else f"{host} ({ip})"
                article = "an" if kind[0] in "aeiou" else "a"
                return f"refused: {where} is {article} {kind} address; set {SETTING} to allow it"
        return None
