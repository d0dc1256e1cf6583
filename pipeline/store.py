"""Run storage by URI: a local path or an object store (s3://, gs://) through ``pyarrow.fs``.

Writes are atomic: locally a temp name then a rename; on object stores an object only appears
when its upload completes, so a killed run never leaves a half file that a rerun would trust.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

TMP_PREFIX = ".tmp-"


def is_remote(uri: str) -> bool:
    """True for object-store URIs (``scheme://``), False for local paths and ``file://``."""
    return "://" in uri and not uri.startswith("file://")


@lru_cache(maxsize=32)
def _filesystem_for(scheme_and_host: str) -> pafs.FileSystem:
    return pafs.FileSystem.from_uri(scheme_and_host)[0]


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and in-filesystem path of ``uri`` (local paths are made absolute)."""
    if is_remote(uri):
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path
    local = uri[len("file://") :] if uri.startswith("file://") else uri
    return pafs.LocalFileSystem(), os.path.abspath(local)


def normalize(uri: str) -> str:
    """A canonical form of a run URI: absolute local path, or the remote URI without trailing '/'."""
    return uri.rstrip("/") if is_remote(uri) else resolve(uri)[1]


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with '/'."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def list_files(dir_uri: str, prefix: str = "", suffix: str = "") -> list[str]:
    """Files directly under ``dir_uri`` whose name has the prefix and suffix, sorted; [] if absent."""
    fs, path = resolve(dir_uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except FileNotFoundError:
        return []
    names = sorted(
        i.base_name for i in infos
        if i.type == pafs.FileType.File and i.base_name.startswith(prefix) and i.base_name.endswith(suffix)
    )
    return [join(dir_uri, n) for n in names]


def remove(uri: str) -> None:
    """Delete a file or a whole directory; absent is fine."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def _atomic_target(uri: str) -> tuple[pafs.FileSystem, str, str]:
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if is_remote(uri):
        return fs, path, path  # object stores publish an object only when its upload completes
    return fs, path, f"{parent}/{TMP_PREFIX}{uuid.uuid4().hex}-{path.rsplit('/', 1)[1]}"


@contextlib.contextmanager
def open_atomic(uri: str) -> Iterator[Any]:
    """A writable stream whose file appears under ``uri`` only if the block completes. Locally the data
    streams to a temp file that is renamed at the end; for object stores it is buffered and uploaded
    at the end, so that an error never publishes a half object."""
    fs, final, tmp = _atomic_target(uri)
    if tmp == final:
        buf = io.BytesIO()
        yield buf
        with fs.open_output_stream(final) as f:
            f.write(buf.getbuffer())
        return
    try:
        with fs.open_output_stream(tmp) as f:
            yield f
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise
    fs.move(tmp, final)


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file atomically."""
    with open_atomic(uri) as f:
        f.write(data)


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_parquet(uri: str, table: pa.Table) -> None:
    """Write one Parquet file atomically (zstd; binary media columns stay as written)."""
    fs, final, tmp = _atomic_target(uri)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    with fs.open_output_stream(tmp) as f:
        f.write(buf.getvalue())
    if tmp != final:
        fs.move(tmp, final)


def remove_temp_files(dir_uri: str) -> int:
    """Delete temp files a killed writer left behind in ``dir_uri``; returns how many."""
    stale = list_files(dir_uri, prefix=TMP_PREFIX)
    for uri in stale:
        remove(uri)
    return len(stale)


def open_input(uri: str):
    """A seekable binary file object for reading ``uri``."""
    fs, path = resolve(uri)
    return fs.open_input_file(path)
