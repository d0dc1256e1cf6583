"""One error vocabulary and one retry rule for both download paths: the same failures, served by a real
HTTP server on 127.0.0.1, fetched once by the plain HTTP path and once through yt-dlp, end with the same
status and the same ``error`` text. The retry helper is checked on its own: which failures it retries,
how long it waits, and how the attempts show in the reason."""

from __future__ import annotations

import pyarrow as pa
import pytest

from stages.base import RunContext
from stages.download import DownloadConfig, DownloadStage
from stages.web import failures
from stages.web.failures import DownloadFailed
from stages.web.retry import MAX_RETRY_AFTER_S, RetryPolicy, retry_after_seconds
from tests.httpserver import make_media, serve, unused_port
from tests.test_download_faults import FAST

ROUTES = ("http", "yt-dlp")
CONFIG = {**FAST, "socket_timeout_s": 1.0}  # the fault tests' limits, a shorter socket timeout
# name -> server path (None: a port nothing listens on), expected status, expected reason (exact)
SAME = {
    "http_404": ("/status/404/x.mp4", "failed", "HTTP 404 Not Found"),
    "http_503": ("/status/503/x.mp4", "failed", "HTTP 503 Service Unavailable (after 2 attempts)"),
    "timeout": (
        "/slow/5/a.mp4",
        "failed",
        "timed out: no response for 1 s (socket_timeout) (after 2 attempts)",
    ),
    "refused": (None, "failed", "connection refused (after 2 attempts)"),
    "oversize": (
        "/big/5.mp4",
        "filtered",
        "file larger than the size cap (5.0 MB > 2.0 MB, from Content-Length)",
    ),
    "oversize_streaming": (
        "/bignolength/5.mp4",
        "filtered",
        "file larger than the size cap (over 2.0 MB while streaming)",
    ),
    "too_slow": ("/drip/a.mp4", "failed", "download too slow: over 4 s (max_download_s)"),
    "empty": ("/empty.mp4", "failed", "empty response body"),
    "garbage": ("/garbage.mp4", "failed", "not a video: the first bytes match no known video container"),
    "too_long": ("/v/long.mp4", "filtered", "duration 25.0 s over the cap of 20 s (known after download)"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve(make_media(tmp_path_factory.mktemp("served"))) as s:
        yield s


def download(root, urls: dict[str, str], **cfg) -> dict[str, dict]:
    stage = DownloadStage(DownloadConfig(**{**CONFIG, **cfg}), RunContext(root=str(root)))
    stage.setup()
    rows = [{"video_id": f"t-{name}", "url": url, "path": None} for name, url in urls.items()]
    return {r["video_id"][2:]: r for r in stage.process(pa.Table.from_pylist(rows)).to_pylist()}


@pytest.fixture(scope="module")
def by_route(server, tmp_path_factory):
    urls = {
        name: server.url(path) if path else f"http://127.0.0.1:{unused_port()}/a.mp4"
        for name, (path, _, _) in SAME.items()
    }
    urls["stall"] = server.url("/stall/a.mp4")
    return {
        route: download(tmp_path_factory.mktemp(route), urls, route=route, allow_private_addresses=True)
        for route in ROUTES
    }


@pytest.mark.parametrize("case", sorted(SAME))
def test_the_same_failure_reads_the_same_on_both_paths(by_route, case):
    _, status, reason = SAME[case]
    for route in ROUTES:
        row = by_route[route][case]
        assert (row["status"], row["error"]) == (status, reason), (route, row)


def test_a_stalled_body_reads_the_same_up_to_the_bytes_each_path_saw(by_route):
    for route in ROUTES:
        error = by_route[route]["stall"]["error"]
        assert error.startswith("stalled: no data for 1 s (socket_timeout) after "), (route, error)
        assert error.endswith(" bytes (after 2 attempts)"), (route, error)


@pytest.mark.parametrize("route", ROUTES)
def test_a_refused_private_address_reads_the_same_on_both_paths(server, tmp_path, route):
    before = len(server.hits("/v/a.mp4"))
    (row,) = download(
        tmp_path, {"x": server.url("/v/a.mp4")}, route=route, allow_private_addresses=False
    ).values()
    assert (row["status"], row["error"]) == (
        "failed",
        "refused: 127.0.0.1 is a loopback address; set download.allow_private_addresses to allow it",
    )
    assert len(server.hits("/v/a.mp4")) == before, "refused before any request"


# -- the retry helper ------------------------------------------------------------------------------
class Attempts:
    """Fails with the given failures in turn, then returns "done"; records the waits asked for."""

    def __init__(self, *fails: DownloadFailed):
        self.fails, self.calls, self.waits = list(fails), 0, []

    def __call__(self) -> str:
        self.calls += 1
        if self.fails:
            raise self.fails.pop(0)
        return "done"

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)


def test_retryable_failures_are_retried_with_jittered_doubling_waits():
    attempts = Attempts(failures.http_status(503, "Service Unavailable"), failures.timed_out(2.0))
    assert RetryPolicy(retries=3, backoff_s=1.0).call(attempts, sleep=attempts.sleep) == "done"
    assert attempts.calls == 3
    first, second = attempts.waits
    assert 0.5 <= first <= 1.0 and 1.0 <= second <= 2.0


def test_the_last_failure_says_how_many_attempts_were_made():
    attempts = Attempts(*(failures.http_status(500, "Internal Server Error") for _ in range(5)))
    with pytest.raises(DownloadFailed) as e:
        RetryPolicy(retries=2, backoff_s=0.0).call(attempts, sleep=attempts.sleep)
    assert str(e.value) == "HTTP 500 Internal Server Error (after 3 attempts)" and attempts.calls == 3


@pytest.mark.parametrize(
    "failure",
    [
        failures.http_status(404, "Not Found"),
        failures.too_large(5e6, 2e6, "Content-Length"),
        failures.opted_out("opted out by X-Robots-Tag: noai"),
        failures.refused_address("refused: 10.0.0.1 is a private address"),
    ],
)
def test_failures_that_another_attempt_cannot_change_are_not_retried(failure):
    attempts = Attempts(failure)
    with pytest.raises(DownloadFailed) as e:
        RetryPolicy(retries=3).call(attempts, sleep=attempts.sleep)
    assert e.value is failure and attempts.calls == 1 and attempts.waits == []
    assert "attempts" not in str(e.value)


def test_a_servers_retry_after_is_honoured_and_capped():
    slow_down = failures.http_status(429, "Too Many Requests", retry_after_seconds("7"))
    attempts = Attempts(slow_down)
    RetryPolicy(retries=1, backoff_s=0.01).call(attempts, sleep=attempts.sleep)
    assert attempts.waits == [7.0]
    assert retry_after_seconds("86400") == MAX_RETRY_AFTER_S
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    assert retry_after_seconds("soon") == 0.0 and retry_after_seconds(None) == 0.0
