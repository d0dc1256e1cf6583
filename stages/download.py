"""Download stage: makes each candidate's media available as a file and records its identity.

Local files (``path``) are used in place: the stage checks them and records size and sha256.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa

from pipeline import store
from stages.base import RowError, Stage, StageConfig

CHUNK = 1 << 20


class DownloadConfig(StageConfig):
    batch_size: int = 16


def sha256_of(uri: str) -> tuple[str, int]:
    """(hex sha256, size in bytes) of a file, read in chunks."""
    h, n = hashlib.sha256(), 0
    fs, path = store.resolve(uri)
    with fs.open_input_stream(path) as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


class DownloadStage(Stage):
    name = "download"
    upstream = ("discover",)
    reads = ("video_id", "url", "path")
    Config = DownloadConfig
    schema = pa.schema([("media", pa.string()), ("sha256", pa.string()), ("bytes", pa.int64())])

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        path = row.get("path")
        if not path:
            raise RowError(f"no downloader for {row.get('url')!r} in this build")
        if not store.exists(path):
            raise RowError(f"file not found: {path}")
        digest, size = sha256_of(path)
        if size == 0:
            raise RowError(f"empty file (0 bytes): {path}")
        return {"media": path, "sha256": digest, "bytes": size}
