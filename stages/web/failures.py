"""The words of a download that did not produce a video, the same whichever path fetched the URL.

The direct HTTP path (``stages.web.fetch``) and the yt-dlp path (``stages.web.ytdlp_fetch``) meet
the same failures (a 404, a server that never answers, a body over the size cap, a refused address)
through different libraries. Each failure is built here, once, as a ``DownloadFailed``: the reason
for the manifest's ``error`` column, the row's status, and whether another attempt may help (so the
retry helper, ``stages.web.retry``, asks the failure instead of matching its words). Network errors
from either library are classified by one function, ``transport_failure``, reading the exception
chain's text (``requests``, ``urllib3`` and yt-dlp's networking layer all keep the socket's words).
"""

from __future__ import annotations

from contracts.status import FAILED, FILTERED, machine_reason, transient
from stages.base import RowError


class DownloadFailed(RowError):
    """A download that did not produce a video; ``str(e)`` is the manifest reason.

    ``retryable``: another attempt may succeed (timeouts, 5xx, 408, 429, dropped connections);
    ``retry_after``: seconds the server asked us to wait (``Retry-After``), 0 if it did not say.
    """

    def __init__(
        self, reason: str, *, status: str = FAILED, retryable: bool = False, retry_after: float = 0.0
    ):
        super().__init__(reason, status=status)
        self.reason, self.retryable, self.retry_after = reason, retryable, retry_after

    def after_attempts(self, attempts: int) -> DownloadFailed:
        """The same failure, its reason saying how many attempts it took (when more than one)."""
        if attempts > 1:
            self.reason += f" (after {attempts} attempts)"
            self.args = (self.reason,)
        return self


def _retryable(reason: str) -> DownloadFailed:
    return DownloadFailed(reason, retryable=True)


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


# -- what the server answered ------------------------------------------------------------------------
def http_status(code: int, phrase: str = "", retry_after: float = 0.0) -> DownloadFailed:
    """An HTTP error status; 408, 429 and 5xx are worth another attempt."""
    return DownloadFailed(
        f"HTTP {code} {phrase or ''}".strip(),
        retryable=code in (408, 429) or code >= 500,
        retry_after=retry_after,
    )


def redirect_loop(limit: int) -> DownloadFailed:
    return DownloadFailed(f"redirect loop: more than {limit} redirects")


def empty_body() -> DownloadFailed:
    return DownloadFailed("empty response body")


def page_not_video(content_type: str) -> DownloadFailed:
    return DownloadFailed(
        f"not a video: the server sent a page ({content_type or 'no content type'}) instead of a video"
    )


def unknown_container() -> DownloadFailed:
    return DownloadFailed("not a video: the first bytes match no known video container")


def opted_out(reason: str) -> DownloadFailed:
    """A robots opt-out (``stages.web.politeness.opt_out_reason`` words it): a rule, so filtered."""
    return DownloadFailed(reason, status=FILTERED)


# -- our own limits ----------------------------------------------------------------------------------
def too_large(size: float, cap: float, source: str) -> DownloadFailed:
    """Over the size cap before the transfer; ``source`` says who told us the size."""
    return DownloadFailed(
        f"file larger than the size cap ({_mb(size)} > {_mb(cap)}, from {source})", status=FILTERED
    )


def too_large_streaming(cap: float) -> DownloadFailed:
    return DownloadFailed(f"file larger than the size cap (over {_mb(cap)} while streaming)", status=FILTERED)


def too_slow(max_seconds: float) -> DownloadFailed:
    return DownloadFailed(f"download too slow: over {max_seconds:g} s (max_download_s)")


def refused_address(problem: str, via: str = "") -> DownloadFailed:
    """A URL whose host is off-limits (``AddressGuard.problem`` words it), reached ``via`` a redirect
    or a page (``"redirect "``, ``"the page's media URL was "``), or named directly (``""``)."""
    return DownloadFailed(f"{via}{problem}")


# -- the network -------------------------------------------------------------------------------------
def timed_out(timeout: float | None) -> DownloadFailed:
    """No response within the socket timeout (connect, or the answer's first bytes)."""
    within = f"for {timeout:g} s (socket_timeout)" if timeout else "within socket_timeout"
    return _retryable(f"timed out: no response {within}")


def stalled(timeout: float | None, received: int) -> DownloadFailed:
    """The body began, then no byte came for the socket timeout."""
    within = f"for {timeout:g} s (socket_timeout)" if timeout else "within socket_timeout"
    return _retryable(f"stalled: no data {within} after {received} bytes")


def transport_failure(error: BaseException, received: int, timeout: float | None) -> DownloadFailed:
    """Words for a network failure of either library: refused, reset, timed out, stalled, cut short."""
    text = " ".join(str(a) for a in exception_chain(error))
    low = text.lower()
    if "timed out" in low or "timeout" in low:
        return stalled(timeout, received) if received else timed_out(timeout)
    if "refused" in low:
        return _retryable("connection refused")
    if "incompleteread" in low or "incomplete read" in low or "connection broken" in low:
        return _retryable(f"connection closed before the body was complete ({received} bytes received)")
    if "name or service not known" in low or "nodename nor servname" in low or "getaddrinfo" in low:
        return _retryable("host name could not be resolved")
    if "reset" in low:
        return _retryable("connection reset by the server")
    return _retryable(f"network error: {type(error).__name__}: {text[:200]}")


def machine_failure(error: BaseException, doing: str) -> DownloadFailed | None:
    """A full disk, a permission, a read-only mount while ``doing`` something: transient (a plain
    rerun tries the row again, ``contracts.status``), or None when the error is not the machine's."""
    words = machine_reason(error)
    return DownloadFailed(transient(f"{words} {doing}")) if words else None


def exception_chain(error: BaseException) -> list[BaseException]:
    """The error and every error behind it: ``__cause__``/``__context__``, a wrapped first argument
    (urllib3, requests), yt-dlp's ``exc_info`` (``DownloadError``) and ``cause`` (networking)."""
    out: list[BaseException] = []
    seen: set[int] = set()
    cur: BaseException | None = error
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        out.append(cur)
        exc_info = getattr(cur, "exc_info", None)
        wrapped = exc_info[1] if exc_info and len(exc_info) > 1 and exc_info[1] is not cur else None
        first = cur.args[0] if cur.args and isinstance(cur.args[0], BaseException) else None
        cause = getattr(cur, "cause", None)
        cur = (
            wrapped
            or (cause if isinstance(cause, BaseException) else None)
            or cur.__cause__
            or cur.__context__
            or first
        )
    return out
