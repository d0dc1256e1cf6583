"""Where downloaded media lives: ``{root}/media/{video_id}.{ext}``, written through private temp
names and published by an atomic rename (locally) or a completed upload (object stores), plus the
quick checks a fresh download gets (hash, duration from the header).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import uuid

from contracts import store
from stages.base import RowError
from stages.web.fetch import MEDIA_EXTENSIONS, remove_quietly

CHUNK = 1 << 20
COMMON_EXTS = ("mp4", "webm", "mkv", "mov")


def sha256_of(uri: str) -> tuple[str, int]:
    """(hex sha256, size in bytes) of a file, read in chunks."""
    h, n = hashlib.sha256(), 0
    fs, path = store.resolve(uri)
    with fs.open_input_stream(path) as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def mp4_duration(path: str) -> float | None:
    """Duration from an MP4/MOV movie header (``moov/mvhd``), reading box headers only; None if absent."""
    with open(path, "rb") as f:
        end = os.fstat(f.fileno()).st_size
        pos = 0
        while pos + 8 <= end:  # top-level boxes: find moov (often after mdat, at the file's end)
            f.seek(pos)
            head = f.read(16)
            size, kind = struct.unpack(">I4s", head[:8])
            header = 8
            if size == 1 and len(head) == 16:
                size, header = struct.unpack(">Q", head[8:16])[0], 16
            elif size == 0:
                size = end - pos
            if size < header:
                return None
            if kind == b"moov":
                inner, stop = pos + header, pos + size
                while inner + 8 <= stop:
                    f.seek(inner)
                    child, ckind = struct.unpack(">I4s", f.read(8))
                    if ckind == b"mvhd":
                        body = f.read(32)
                        fmt, at = (">IQ", 20) if body[0] == 1 else (">II", 12)
                        timescale, duration = struct.unpack(fmt, body[at : at + struct.calcsize(fmt)])
                        unknown = duration in (0, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)
                        return duration / timescale if timescale and not unknown else None
                    if child < 8:
                        return None
                    inner += child
                return None
            pos += size
    return None


def media_duration(path: str) -> float | None:
    """Duration in seconds: the MP4 header when there is one (~50 us), else PyAV (~1-3 ms)."""
    import av

    try:
        if (seconds := mp4_duration(path)) is not None:
            return seconds
    except (OSError, struct.error):
        pass

    try:
        with av.open(path) as c:
            if c.duration:
                return c.duration / 1_000_000
            vs = next(iter(c.streams.video), None)
            if vs is not None and vs.duration and vs.time_base:
                return float(vs.duration * vs.time_base)
    except (av.FFmpegError, OSError, ValueError) as e:
        why = getattr(e, "strerror", None) or type(e).__name__  # not str(e): it names our temp path
        raise RowError(f"the downloaded file is not a readable video ({why})") from None
    return None


class MediaDir:
    """``{root}/media``: private temp dirs for work in progress, atomic publication by video_id."""

    def __init__(self, root: str):
        self.uri = store.join(root, "media")
        self.remote = store.is_remote(root)
        if not self.remote:
            os.makedirs(self.uri, exist_ok=True)

    def work_dir(self) -> str:
        # Beside the final files locally (the rename stays on one filesystem); in /tmp for object stores.
        return tempfile.mkdtemp(prefix=store.TMP_PREFIX, dir=None if self.remote else self.uri)

    def temp_file(self, video_id: str) -> str:
        name = f"{store.TMP_PREFIX}{uuid.uuid4().hex[:12]}-{video_id}.part"
        return os.path.join(tempfile.gettempdir() if self.remote else self.uri, name)

    def existing(self, video_id: str) -> str | None:
        """The published file of this id, if a run already downloaded it (common extensions first)."""
        exts = (
            COMMON_EXTS + tuple(sorted(MEDIA_EXTENSIONS - set(COMMON_EXTS)))
            if not self.remote
            else COMMON_EXTS
        )
        for ext in exts:
            uri = store.join(self.uri, f"{video_id}.{ext}")
            if os.path.exists(uri) if not self.remote else store.exists(uri):
                return uri
        return None

    def publish(self, local_file: str, video_id: str, ext: str) -> str:
        final = store.join(self.uri, f"{video_id}.{ext}")
        if not self.remote:
            os.replace(local_file, final)
            return final
        store.upload_file(local_file, final)  # streamed; the object appears only when complete
        return final

    def remove_stale(self) -> None:
        """Delete temp dirs a killed run left behind (one run per root at a time)."""
        if self.remote:
            store.remove_temp_files(self.uri)
            return
        if not os.path.isdir(self.uri):
            return
        for entry in os.scandir(self.uri):
            if entry.name.startswith(store.TMP_PREFIX):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    remove_quietly(entry.path)
