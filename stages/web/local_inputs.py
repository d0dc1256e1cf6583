"""Local inputs (``path`` rows) are used in place, but read with the caps of a download.

A path from a list can name anything: ``/dev/zero`` and ``/dev/urandom`` never end, a FIFO blocks
the reader until someone writes to it, a directory cannot be hashed. Each of those used to hold a
download task forever and lose the good rows of its batch. So a local input must be a regular file
(checked with ``stat``, which never blocks), and the read that hashes it stops at the size cap
(``download.max_filesize_mb``, filtered as a download would be) and the wall-clock cap
(``download.max_download_s``, failed).
"""

from __future__ import annotations

import hashlib
import os
import stat
import time

import pyarrow.fs as pafs

from contracts import store
from stages.base import RowError, RowFiltered

CHUNK = 1 << 20
NOT_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def local_size(path: str) -> int:
    """The size of a listed file; RowError when it is missing or not a regular file."""
    if store.is_remote(path):
        fs, inner = store.resolve(path)
        info = fs.get_file_info(inner)
        if info.type == pafs.FileType.NotFound:
            raise RowError(f"file not found: {path}")
        if info.type != pafs.FileType.File:
            raise RowError(f"not a regular file (a directory): {path}")
        return int(info.size or 0)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise RowError(f"file not found: {path}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((words for test, words in NOT_REGULAR if test(st.st_mode)), "not a regular file")
        raise RowError(f"not a regular file ({kind}): {path}")
    return st.st_size


def hash_local_input(path: str, max_bytes: int, max_seconds: float) -> tuple[str, int]:
    """(sha256, size) of a listed file, read within the download caps."""
    size = local_size(path)
    if size > max_bytes:
        raise RowFiltered(f"file larger than the size cap ({size / 1e6:.1f} MB > {max_bytes / 1e6:.1f} MB)")
    h, n, started = hashlib.sha256(), 0, time.monotonic()
    fs, inner = store.resolve(path)
    with fs.open_input_stream(inner) as f:
        while chunk := f.read(CHUNK):
            n += len(chunk)
            if n > max_bytes:  # it grew while we read it
                raise RowFiltered(
                    f"file larger than the size cap (over {max_bytes / 1e6:.1f} MB while reading)"
                )
            if time.monotonic() - started > max_seconds:
                raise RowError(
                    f"reading the file took over {max_seconds:g} s (download.max_download_s): {path}"
                )
            h.update(chunk)
    return h.hexdigest(), n
