"""Being a good guest on other people's servers: rate limits per host, connection limits per host,
and the opt-out signals a response may carry (``X-Robots-Tag``, ``<meta name="robots">``).

- ``HostRateLimiter`` hands out start times per host at most ``rate`` per second. One instance runs
  as a named Ray actor for the whole run, so the limit holds over all workers together; without Ray
  (unit use) a process-local instance does the same for one process.
- ``HostSlots`` bounds concurrent requests per host inside one worker process.
- ``opt_out_reason`` reads robots directives, as img2dataset does for images: a directive applies
  when it names no user agent, names ours, or names ``*``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

DEFAULT_OPT_OUTS = ("noai", "noimageai", "noindex", "noimageindex", "none")
META_ROBOTS = re.compile(  # <meta name=... content=...> in either attribute order
    rb"""<meta\s[^>]*name\s*=\s*["']?([a-z0-9_-]+)["']?[^>]*content\s*=\s*["']([^"'>]*)["']"""
    rb"""|<meta\s[^>]*content\s*=\s*["']([^"'>]*)["'][^>]*name\s*=\s*["']?([a-z0-9_-]+)["']?""",
    re.IGNORECASE,
)


def host_of(url: str) -> str:
    """The lower-case host (with port) a URL talks to; ``file`` for local files."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return "file"
    return (parts.netloc.rsplit("@", 1)[-1] or "").lower()


class HostRateLimiter:
    """Start slots per host, ``rate`` per second; ``reserve`` says how long the caller must wait."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate
        self.next_free: dict[str, float] = {}
        self.lock = threading.Lock()

    def reserve(self, host: str) -> float:
        """Book the next free slot for ``host``; returns the seconds to sleep before starting."""
        with self.lock:
            now = time.time()
            slot = max(now, self.next_free.get(host, 0.0))
            self.next_free[host] = slot + self.interval
            return slot - now


class RateLimit:
    """A per-host rate limit shared by the run: a named Ray actor when one was started, else local."""

    def __init__(self, rate: float | None, actor_name: str | None = None):
        self.rate, self.actor_name = rate, actor_name
        self._actor: Any = None
        self._local: HostRateLimiter | None = None
        self._lock = threading.Lock()

    @staticmethod
    def start(name: str, rate: float) -> Any:
        """Create the shared limiter actor (driver side, before the plan runs)."""
        import ray

        return ray.remote(num_cpus=0)(HostRateLimiter).options(name=name, get_if_exists=True).remote(rate)

    def _backend(self) -> Any:
        with self._lock:
            if self._actor is None and self._local is None:
                if self.actor_name:
                    import ray

                    try:
                        if not ray.is_initialized():  # get_actor would start a local instance
                            raise RuntimeError("Ray is not running")
                        self._actor = ray.get_actor(self.actor_name)
                    except (ValueError, RuntimeError):
                        self._local = HostRateLimiter(self.rate)
                else:
                    self._local = HostRateLimiter(self.rate)
            return self._actor or self._local

    def wait(self, host: str) -> float:
        """Block until this host may be contacted again; returns the seconds waited."""
        if not self.rate or host == "file":
            return 0.0
        backend = self._backend()
        if backend is self._local:
            delay = backend.reserve(host)
        else:
            import ray

            delay = ray.get(backend.reserve.remote(host))
        if delay > 0:
            time.sleep(delay)
        return max(delay, 0.0)


class HostSlots:
    """At most ``per_host`` concurrent requests to one host from this process."""

    def __init__(self, per_host: int):
        self.per_host = per_host
        self._sems: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    @contextmanager
    def slot(self, host: str) -> Iterator[None]:
        if host == "file":  # local files: no server to spare
            yield
            return
        with self._lock:
            sem = self._sems.setdefault(host, threading.BoundedSemaphore(self.per_host))
        with sem:
            yield


def _directives(value: str, agent: str) -> Iterator[str]:
    """Directives of one robots value that apply to ``agent`` ("bot: a, b" applies to bot only)."""
    scope: str | None = None
    for raw in value.split(","):
        part = raw.strip().lower()
        if ":" in part:
            head, rest = part.split(":", 1)
            # "unavailable_after: <date>" has a colon too; only a bare token names a user agent.
            if re.fullmatch(r"[a-z0-9_*-]+", head.strip()) and head.strip() != "unavailable_after":
                scope, part = head.strip(), rest.strip()
        if scope in (None, "*", agent.lower()) and part:
            yield part


def opt_out_reason(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    agent: str,
    directives: Iterable[str] = DEFAULT_OPT_OUTS,
    page_head: bytes = b"",
) -> str | None:
    """Why a response opts out of our crawl (its ``X-Robots-Tag`` or robots ``<meta>``), or None."""
    wanted = {d.lower() for d in directives}
    if not wanted:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        if name.lower() == "x-robots-tag":
            hit = [d for d in _directives(value, agent) if d in wanted]
            if hit:
                return f"opted out by X-Robots-Tag: {', '.join(hit)}"
    for m in META_ROBOTS.finditer(page_head):
        name = (m.group(1) or m.group(4) or b"").decode("ascii", "replace").lower()
        content = (m.group(2) or m.group(3) or b"").decode("utf-8", "replace")
        if name in ("robots", agent.lower()):
            hit = [d for d in _directives(content, agent) if d in wanted]
            if hit:
                return f'opted out by <meta name="{name}" content="{content.strip()}">'
    return None


def run_scoped_name(root: str, config_hash: str, purpose: str) -> str:
    """A Ray actor name shared by the driver and the workers of one stage run (same root and config)."""
    import hashlib

    return f"vidal-{purpose}-{hashlib.sha1(f'{root}|{config_hash}'.encode()).hexdigest()[:12]}"
