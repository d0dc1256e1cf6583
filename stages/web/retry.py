"""One retry rule for both download paths: which failures get another attempt, and how long to wait.

A failure says itself whether another attempt may help (``DownloadFailed.retryable``: timeouts,
dropped connections, 5xx, 408, 429; never a 404, a size cap or an opt-out). Waits double from
``backoff_s`` and are jittered down to half of that, so that the workers of a run that all met the
same failing host do not come back to it in step; a server's ``Retry-After`` (capped at a minute)
is honoured when it asks for longer. yt-dlp's own retries of a media transfer wait by the same
rule (``delay`` as its ``retry_sleep_functions``).
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from stages.web.failures import DownloadFailed

T = TypeVar("T")
MAX_RETRY_AFTER_S = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` more attempts after the first, waiting ``delay(n)`` before the n-th retry."""

    retries: int = 3
    backoff_s: float = 1.0

    def delay(self, n: int) -> float:
        """Seconds before retry ``n`` (1-based): ``backoff_s * 2**(n-1)``, jittered into its upper half."""
        full = self.backoff_s * 2 ** max(n - 1, 0)
        return full * random.uniform(0.5, 1.0)

    def call(self, attempt: Callable[[], T], sleep: Callable[[float], None] = time.sleep) -> T:
        """``attempt()`` until it returns, or raises a failure that is not retryable or the last one
        allowed; that failure's reason then says how many attempts were made."""
        n = 0
        while True:
            try:
                return attempt()
            except DownloadFailed as e:
                if not e.retryable or n >= self.retries:
                    raise e.after_attempts(n + 1) from None
                n += 1
                sleep(max(e.retry_after, self.delay(n)))


def retry_after_seconds(value: str | None) -> float:
    """A ``Retry-After`` header (seconds or an HTTP date) as seconds from now, capped at a minute."""
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return 0.0
        seconds = when.timestamp() - time.time() if when else 0.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
