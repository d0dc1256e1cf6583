"""The status vocabulary of every manifest row, and the failures that belong to the machine.

Every row has ``status`` ``ok`` | ``failed`` | ``filtered`` and ``error`` (null, or one line).

Failures that belong to the machine, not to the input: a full disk, a permission, a read-only mount.

A row that failed because the disk was full is not a bad video: after the operator frees space, a
plain rerun must try it again. Such rows get an ``error`` that starts with ``TRANSIENT`` ("transient: ");
the runner treats them as not done on the next run (``contracts.manifest.drop_transient_failures``),
while every other failed row stays done until ``--retry-failed``.
"""

from __future__ import annotations

import errno

OK, FAILED, FILTERED = "ok", "failed", "filtered"
STATUSES = (OK, FAILED, FILTERED)

TRANSIENT = "transient: "
# errno -> words; these say something about the machine the worker runs on, not about the input
MACHINE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EMFILE: "too many open files",
    errno.ENFILE: "too many open files in the system",
    errno.ENOMEM: "out of memory",
    errno.EIO: "I/O error",
}
# how the same errors read once a library has turned them into text (yt-dlp, ffmpeg)
MACHINE_PHRASES = {f"[errno {code}]": words for code, words in MACHINE_ERRNOS.items()}
MACHINE_PHRASES.update(
    {w: w for w in ("no space left on device", "disk quota exceeded", "read-only file system")}
)


def machine_reason(error: BaseException) -> str | None:
    """Words for an error of the machine (in ``error`` or the errors chained to it), else None."""
    seen: set[int] = set()
    cur: BaseException | None = error
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in MACHINE_ERRNOS:
            return MACHINE_ERRNOS[cur.errno]
        exc_info = getattr(cur, "exc_info", None)  # yt-dlp's DownloadError keeps its cause here
        nxt = exc_info[1] if exc_info and len(exc_info) > 1 and exc_info[1] is not cur else None
        cur = nxt or cur.__cause__ or cur.__context__
    text = " ".join(str(error).lower().split())
    return next((words for phrase, words in MACHINE_PHRASES.items() if phrase in text), None)


def transient(words: str) -> str:
    """The manifest reason of a transient failure."""
    return f"{TRANSIENT}{words}"
