"""Politeness measured on the server side: the per-host rate limit (in one worker and run-wide through
the Ray actor), the per-host connection limit, and the robots directives."""

from __future__ import annotations

import threading

import pyarrow as pa
import pytest

from stages.base import RunContext
from stages.download import DownloadConfig, DownloadStage
from stages.web.politeness import HostRateLimiter, opt_out_reason
from tests.httpserver import make_media, serve


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve(make_media(tmp_path_factory.mktemp("served"))) as s:
        yield s


def make_stage(root, **cfg) -> DownloadStage:
    s = DownloadStage(
        DownloadConfig(**{"threads": 8, "socket_timeout_s": 5.0, "allow_private_addresses": True, **cfg}),
        RunContext(root=str(root), stage_config_hash="politeness"),
    )
    s.setup()
    return s


def fetch(stage: DownloadStage, urls: list[str], prefix: str) -> list[dict]:
    rows = [{"video_id": f"{prefix}-{i}", "url": u, "path": None} for i, u in enumerate(urls)]
    out = stage.process(pa.Table.from_pylist(rows)).to_pylist()
    assert all(r["status"] == "ok" for r in out), [r["error"] for r in out]
    return out


def assert_spaced(server, prefix: str, n: int, interval: float) -> None:
    """The k-th request reached the server at least k intervals after the first. (Gap by gap would
    be wrong: a request that the busy server takes up late shortens the gap after it.)"""
    starts = sorted(h.start for h in server.hits(prefix))
    assert len(starts) == n
    lags = [round(t - starts[0], 3) for t in starts]
    assert all(lag >= k * interval - 0.03 for k, lag in enumerate(lags)), lags


def test_rate_limit_spaces_request_starts_per_host(server, tmp_path):
    stage = make_stage(tmp_path / "r", rate_limit_per_host=10.0)
    fetch(stage, [server.url(f"/v/a.mp4?rate={i}") for i in range(8)], "rate")
    assert_spaced(server, "/v/a.mp4?rate=", 8, 0.1)  # 10/s
    # another host is not slowed by the first one's budget
    fetch(stage, [server.url(f"/v/b.mp4?rate={i}", host="localhost") for i in range(2)], "other")
    assert len(server.hits("/v/b.mp4?rate=")) == 2


def test_rate_limit_holds_across_workers_through_the_ray_actor(server, tmp_path, ray_local):
    root = tmp_path / "g"
    driver = DownloadStage(
        DownloadConfig(rate_limit_per_host=10.0), RunContext(root=str(root), stage_config_hash="g")
    )
    driver.prepare()  # starts the run-wide limiter actor, as the runner does
    try:
        workers = [make_stage(root, rate_limit_per_host=10.0) for _ in range(2)]
        for w in workers:
            w.context = driver.context
            w.setup()
        threads = [
            threading.Thread(
                target=fetch, args=(w, [server.url(f"/v/a.mp4?global={k}-{i}") for i in range(4)], f"g{k}")
            )
            for k, w in enumerate(workers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(w.rate._actor is not None for w in workers), "both workers booked through the actor"
        assert_spaced(server, "/v/a.mp4?global=", 8, 0.1)
    finally:
        driver.finish()


def test_per_host_connection_limit(server, tmp_path):
    server.reset_stats()
    stage = make_stage(tmp_path / "c", threads=12, per_host_connections=2)
    urls = [
        server.url(f"/slow/0.3/a.mp4?c={i}", host=h) for i in range(6) for h in ("127.0.0.1", "localhost")
    ]
    fetch(stage, urls, "conc")
    assert server.max_in_flight["127.0.0.1"] == 2 and server.max_in_flight["localhost"] == 2
    # the two hosts were served at the same time: the limit is per host, not global
    a = [h for h in server.hits("/slow/") if h.host == "127.0.0.1"]
    b = [h for h in server.hits("/slow/") if h.host == "localhost"]
    assert any(x.start < y.end and y.start < x.end for x in a for y in b)


def test_rate_limiter_books_slots():
    lim = HostRateLimiter(rate=4.0)
    waits = [lim.reserve("h") for _ in range(4)]
    assert waits[0] == 0 and waits[3] == pytest.approx(0.75, abs=0.02)
    assert lim.reserve("other") == 0


@pytest.mark.parametrize(
    "headers, page, reason",
    [
        ([("X-Robots-Tag", "noai")], b"", "X-Robots-Tag: noai"),
        ([("X-Robots-Tag", "noindex, nofollow")], b"", "X-Robots-Tag: noindex"),
        ([("x-robots-tag", "vidal: noimageai")], b"", "X-Robots-Tag: noimageai"),
        ([("X-Robots-Tag", "otherbot: noai"), ("X-Robots-Tag", "nofollow")], b"", None),
        ([("X-Robots-Tag", "unavailable_after: 25 Jun 2030 15:00:00 PST")], b"", None),
        ([], b'<html><head><meta name="robots" content="noai, noimageai"></head>', '<meta name="robots"'),
        ([], b"<meta content='noindex' name='vidal'>", '<meta name="vidal"'),
        ([], b'<meta name="googlebot" content="noindex">', None),
    ],
)
def test_robots_directives(headers, page, reason):
    got = opt_out_reason(headers, "vidal", page_head=page)
    assert (got is None) if reason is None else (reason in got), got
    assert (
        opt_out_reason(headers, "vidal", directives=[], page_head=page) is None
    )  # opt-outs can be turned off
