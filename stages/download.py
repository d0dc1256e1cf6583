"""Download stage: makes each candidate's media a file under ``{root}/media/`` and records its identity.

Routes, per URL (``download.route: auto``):

- a host yt-dlp has an extractor for (``download.extractor_hosts``: YouTube, Vimeo, TikTok, …) and
  ``file://`` URLs (only with ``download.allow_file_urls``) -> yt-dlp;
- a media extension (``.mp4``, ``.webm``, …) -> the plain streaming HTTP path (``stages.web.fetch``);
- anything else -> one streaming GET: a video body is kept, a page is handed to yt-dlp, whose
  generic extractor looks for a video in it.

Local files listed by ``path`` are used in place. Each row downloads into a private temp directory
and is published by an atomic rename as ``{video_id}.{ext}``: the name never comes from the remote
side. Inside a task a bounded thread pool runs ``download.threads`` downloads at once, at most
``download.per_host_connections`` per host, and a run-wide Ray actor spaces downloads from one host
to ``download.rate_limit_per_host`` per second over all workers.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal
from urllib.parse import urlsplit

import pyarrow as pa
from pydantic import Field, field_validator

import contracts
from contracts.status import machine_reason, transient
from contracts.video_ids import url_problem
from stages.base import RowError, RowFiltered, Stage, StageConfig, run_isolated
from stages.web.fetch import (
    MEDIA_EXTENSIONS,
    HttpPolicy,
    PageNotMedia,
    container_of,
    fetch_media,
    media_extension,
    redirects_problem,
    remove_quietly,
)
from stages.web.local_inputs import hash_local_input
from stages.web.media_dir import MediaDir, media_duration, sha256_of
from stages.web.politeness import DEFAULT_OPT_OUTS, HostSlots, RateLimit, host_of, run_scoped_name
from stages.web.private_addresses import AddressGuard
from stages.web.retry import RetryPolicy
from stages.web.ytdlp_fetch import YtdlpDownloader, info_subset

SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Short videos: an MP4 between 360p and 720p with audio, merged from separate streams if need be.
DEFAULT_FORMAT = (
    "b[ext=mp4][height>=360][height<=720][vcodec!=none][acodec!=none]"
    "/bv*[ext=mp4][height>=360][height<=720]+ba[ext=m4a]"
    "/b[height<=720][vcodec!=none][acodec!=none]/bv*[height<=720]+ba/b/bv*+ba"
)
EXTRACTOR_HOSTS = [
    "youtube.com",
    "youtu.be",
    "youtube-nocookie.com",
    "vimeo.com",
    "dailymotion.com",
    "tiktok.com",
    "instagram.com",
    "facebook.com",
    "twitter.com",
    "x.com",
    "reddit.com",
    "bilibili.com",
    "twitch.tv",
    "streamable.com",
    "imgur.com",
    "tumblr.com",
    "pinterest.com",
]


class DownloadConfig(StageConfig):
    # I/O bound: two tasks per core, each with a thread pool; batches big enough to keep it busy.
    batch_size: int = 128
    num_cpus: float = Field(0.5, gt=0, description="CPUs reserved per download task (two tasks per core)")
    threads: int = Field(32, ge=1, description="concurrent downloads inside one task (I/O bound)")
    per_host_connections: int = Field(4, ge=1, description="concurrent downloads per host in one worker")
    rate_limit_per_host: float | None = Field(
        None,
        gt=0,
        description="downloads started per second per host, over all workers of the run (None: no limit)",
    )
    route: Literal["auto", "http", "yt-dlp"] = Field(
        "auto", description="auto: HTTP for direct media, yt-dlp for pages; or force one path"
    )
    extractor_hosts: list[str] = Field(
        default_factory=lambda: list(EXTRACTOR_HOSTS),
        description="hosts (and their subdomains) always fetched by yt-dlp",
    )
    format: str = Field(DEFAULT_FORMAT, description="yt-dlp format selector")
    merge_output_format: str = "mp4"
    max_filesize_mb: float = Field(200.0, gt=0, description="size cap; larger files are filtered")
    max_duration: float | None = Field(
        20.0,
        gt=0,
        description="seconds (VIDAL: 20); longer videos are "
        "filtered, before download when the metadata says, else after",
    )
    socket_timeout_s: float = Field(20.0, gt=0, description="no byte for this long fails the attempt")
    max_download_s: float = Field(300.0, gt=0, description="wall-clock cap per download (slow-drip servers)")
    retries: int = Field(3, ge=0, description="retries of transient failures (timeouts, 5xx, 429)")
    extractor_retries: int = Field(3, ge=0)
    retry_backoff_s: float = Field(
        1.0, ge=0, description="first retry wait, doubled each retry (jittered down to half of it)"
    )
    max_redirects: int = Field(10, ge=0)
    sleep_interval_s: float = Field(0.0, ge=0, description="sleep before each download, on both paths")
    max_sleep_interval_s: float | None = Field(
        None, ge=0, description="random sleep up to this (with the above)"
    )
    sleep_requests_s: float = Field(0.0, ge=0, description="sleep between yt-dlp's extraction requests")
    cookies_file: str | None = Field(None, description="Netscape cookies.txt for sites that demand sign-in")
    user_agent: str | None = Field(
        None,
        description="User-Agent; None: yt-dlp's default, and 'vidal-crawler/<version>' on the direct path",
    )
    robots_agent: str = Field("vidal", description="our name in robots directives ('vidal: noai' applies)")
    opt_out_directives: list[str] = Field(
        default_factory=lambda: list(DEFAULT_OPT_OUTS),
        description="X-Robots-Tag / robots <meta> values that skip a video",
    )
    allow_file_urls: bool = Field(
        False, description="accept file:// URLs (through yt-dlp's enable_file_urls)"
    )
    allow_private_addresses: bool | list[str] = Field(
        False,
        description="fetch from loopback, private, link-local (169.254/16: cloud metadata) and other "
        "non-public addresses: true for all (tests, on-premise), or a list of networks, e.g. [10.1.0.0/16]",
    )
    ytdlp_options: dict[str, Any] = Field(
        default_factory=dict,
        description="extra YoutubeDL parameters, e.g. {js_runtimes: {deno: {}}, proxy: ...}",
    )

    @field_validator("allow_private_addresses")
    @classmethod
    def _networks(cls, v: bool | list[str]) -> bool | list[str]:
        for net in v if isinstance(v, list) else []:
            ipaddress.ip_network(net, strict=False)  # ValueError names the bad entry
        return v


class DownloadStage(Stage):
    name = "download"
    upstream = ("discover",)
    reads = ("video_id", "url", "path")
    Config = DownloadConfig
    schema = pa.schema(
        [
            ("media", pa.string()),  # URI of the file (probe reads it)
            ("sha256", pa.string()),
            ("bytes", pa.int64()),
            ("ext", pa.string()),
            ("downloader", pa.string()),  # http | yt-dlp | local | existing
            ("format_id", pa.string()),
            ("format", pa.string()),
            ("content_type", pa.string()),
            ("final_url", pa.string()),
            ("info_json", pa.string()),  # yt-dlp's info fields (or the HTTP response's) as JSON
            ("download_s", pa.float64()),
        ]
    )
    config: DownloadConfig

    # -- driver --------------------------------------------------------------------------------
    def _limiter_name(self) -> str:
        return run_scoped_name(self.context.root, self.context.stage_config_hash, "download-rate")

    def prepare(self) -> None:
        MediaDir(self.context.root).remove_stale()
        if self.config.rate_limit_per_host:
            self._limiter = RateLimit.start(self._limiter_name(), self.config.rate_limit_per_host)

    def finish(self) -> None:
        limiter = getattr(self, "_limiter", None)
        if limiter is not None:
            import ray

            ray.kill(limiter)
            self._limiter = None

    # -- workers -------------------------------------------------------------------------------
    def setup(self) -> None:
        c = self.config
        self.media_dir = MediaDir(self.context.root)
        self.pool = ThreadPoolExecutor(max_workers=c.threads, thread_name_prefix="download")
        self.slots = HostSlots(c.per_host_connections)
        self.rate = RateLimit(c.rate_limit_per_host, self._limiter_name() if c.rate_limit_per_host else None)
        max_bytes = int(c.max_filesize_mb * 1e6)
        self.guard = AddressGuard.from_setting(c.allow_private_addresses)
        self.retry = RetryPolicy(c.retries, c.retry_backoff_s)
        self.policy = HttpPolicy(
            socket_timeout=c.socket_timeout_s,
            max_bytes=max_bytes,
            max_seconds=c.max_download_s,
            max_redirects=c.max_redirects,
            retry=self.retry,
            user_agent=c.user_agent or f"vidal-crawler/{contracts.__version__}",
            robots_agent=c.robots_agent,
            opt_outs=tuple(c.opt_out_directives),
            guard=self.guard,
        )
        self.ytdlp = YtdlpDownloader(
            self.ytdlp_params(),
            max_bytes=max_bytes,
            max_duration=c.max_duration,
            max_seconds=c.max_download_s,
            retry=self.retry,
            guard=self.guard,
            redirects_problem=None
            if self.guard.allow_all
            else lambda url: redirects_problem(url, self.policy),
        )

    def ytdlp_params(self) -> dict[str, Any]:
        """YoutubeDL parameters from the config (one place, so that tests and docs can read them)."""
        import imageio_ffmpeg

        c = self.config
        retry = RetryPolicy(c.retries, c.retry_backoff_s)

        def backoff(n: int) -> float:  # yt-dlp counts its retries from 0
            return retry.delay(n + 1)

        params: dict[str, Any] = {
            "quiet": True,
            "noprogress": True,
            "noplaylist": True,
            "extract_flat": "in_playlist",
            "format": c.format,
            "merge_output_format": c.merge_output_format,
            "max_filesize": int(c.max_filesize_mb * 1e6),
            "socket_timeout": c.socket_timeout_s,
            "retries": c.retries,
            "fragment_retries": c.retries,
            "extractor_retries": c.extractor_retries,
            "file_access_retries": 1,
            "retry_sleep_functions": {"http": backoff, "fragment": backoff},
            "ffmpeg_location": imageio_ffmpeg.get_ffmpeg_exe(),
            "enable_file_urls": c.allow_file_urls,
            "overwrites": True,
            "continuedl": False,
            "updatetime": False,
            "allow_playlist_files": False,
            "check_formats": False,
            "color": {"stdout": "no_color", "stderr": "no_color"},
        }
        # (sleep_interval is not passed: the stage sleeps before every download, on both paths)
        if c.sleep_requests_s:
            params["sleep_interval_requests"] = c.sleep_requests_s
        if c.cookies_file:
            params["cookiefile"] = c.cookies_file
        if c.user_agent:
            params["http_headers"] = {"User-Agent": c.user_agent}
        params.update(c.ytdlp_options)
        return params

    def process(self, batch: pa.Table) -> pa.Table:
        if not hasattr(self, "pool"):
            self.setup()
        rows = batch.to_pylist()
        futures = [
            self.pool.submit(run_isolated, r["video_id"], lambda r=r: self.process_row(r)) for r in rows
        ]
        return self.rows_to_table(f.result() for f in futures)

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.download_row(row)
        except OSError as e:  # a full disk, a permission: the machine's, so a plain rerun tries again
            if words := machine_reason(e):
                raise RowError(transient(words)) from None
            raise

    def download_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """One row's media: a local file checked in place, or a download; RowError with the reason."""
        if row.get("path"):
            return self.local_file(row["path"])
        url = (row.get("url") or "").strip()
        if not url:
            raise RowError("the row has neither a url nor a path")
        if problem := url_problem(url, self.config.allow_file_urls) or self.guard.problem(url):
            raise RowError(problem)
        vid = row["video_id"]
        if not SAFE_ID.match(vid):
            raise RowError(f"video_id {vid[:80]!r} is not safe as a file name")
        if found := self.media_dir.existing(vid):  # a killed run downloaded it but wrote no manifest
            digest, size = sha256_of(found)
            return {
                "media": found,
                "sha256": digest,
                "bytes": size,
                "ext": found.rsplit(".", 1)[-1],
                "downloader": "existing",
            }
        host = host_of(url)
        started = time.monotonic()
        with self.slots.slot(host):  # slot first, then the rate: starts stay spaced as booked
            self.rate.wait(host)
            self._polite_sleep()
            out = self.fetch(url, vid)
        out["download_s"] = round(time.monotonic() - started, 3)
        return out

    def _polite_sleep(self) -> None:
        c = self.config
        if c.sleep_interval_s:
            time.sleep(
                random.uniform(c.sleep_interval_s, max(c.max_sleep_interval_s or 0, c.sleep_interval_s))
            )

    def route(self, url: str) -> tuple[str, bool]:
        """("http" | "yt-dlp", whether a page may be handed on to yt-dlp) for a URL."""
        c = self.config
        parts = urlsplit(url)
        if parts.scheme.lower() == "file" or c.route == "yt-dlp":
            return "yt-dlp", False
        if c.route == "http":
            return "http", False
        host = (parts.hostname or "").lower()
        if any(host == h or host.endswith("." + h) for h in c.extractor_hosts):
            return "yt-dlp", False
        return "http", media_extension(url) is None

    def fetch(self, url: str, vid: str) -> dict[str, Any]:
        """Download one URL into the media directory; a dict of manifest columns, RowError if not."""
        path, page_ok = self.route(url)
        if path == "http":
            try:
                return self.fetch_http(url, vid, page_ok)
            except PageNotMedia:
                pass  # a page: yt-dlp's extractors may find the video in it
        return self.fetch_ytdlp(url, vid)

    def fetch_http(self, url: str, vid: str, page_ok: bool) -> dict[str, Any]:
        """The plain streaming path (``stages.web.fetch``); ``PageNotMedia`` for a page when ``page_ok``."""
        tmp = self.media_dir.temp_file(vid)
        try:
            got = fetch_media(url, tmp, self.policy, page_ok=page_ok)
            self._check_duration(tmp)
            return {
                "media": self.media_dir.publish(tmp, vid, got.ext),
                "sha256": got.sha256,
                "bytes": got.bytes,
                "ext": got.ext,
                "downloader": "http",
                "format": got.content_type,
                "content_type": got.content_type,
                "final_url": got.final_url,
                "info_json": json.dumps({"http_status": got.http_status, "headers": got.headers}),
            }
        finally:
            remove_quietly(tmp)  # gone already when published

    def fetch_ytdlp(self, url: str, vid: str) -> dict[str, Any]:
        """The yt-dlp path (``stages.web.ytdlp_fetch``); what it wrote is checked as the plain path
        checks a body (``container_of``), so the same bytes fail with the same words."""
        work = self.media_dir.work_dir()  # yt-dlp may write several files (streams before a merge)
        try:
            result = self.ytdlp.download(url, work)
            with open(result.path, "rb") as f:
                kind = container_of(f.read(512))
            self._check_duration(result.path)
            ext = result.path.rsplit(".", 1)[-1].lower()
            ext = ext if ext in MEDIA_EXTENSIONS else kind
            digest, size = sha256_of(result.path)
            info = result.info
            return {
                "media": self.media_dir.publish(result.path, vid, ext),
                "sha256": digest,
                "bytes": size,
                "ext": ext,
                "downloader": "yt-dlp",
                "format_id": info.get("format_id"),
                "format": info.get("format"),
                "final_url": info.get("webpage_url"),
                "info_json": json.dumps(info_subset(info)),
            }
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _check_duration(self, path: str) -> None:
        cap = self.config.max_duration
        if cap is None:
            return
        duration = media_duration(path)
        if duration is not None and duration > cap:
            raise RowFiltered(f"duration {duration:.1f} s over the cap of {cap:g} s (known after download)")

    def local_file(self, path: str) -> dict[str, Any]:
        """A listed local file (or object-store URI): used in place, checked and hashed within the caps."""
        c = self.config
        digest, size = hash_local_input(path, int(c.max_filesize_mb * 1e6), c.max_download_s)
        if size == 0:
            raise RowError(f"empty file (0 bytes): {path}")
        ext = os.path.splitext(path.rsplit("/", 1)[-1])[1].lstrip(".").lower()
        return {"media": path, "sha256": digest, "bytes": size, "ext": ext or None, "downloader": "local"}
