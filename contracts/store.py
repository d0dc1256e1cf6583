"""Run storage by URI: a local path or an object store (``s3://``, ``gs://``) through ``pyarrow.fs``.

Every reader and writer of the project (manifests, media, shards, indexes, ``_SUCCESS.json``, the
lock, the report, the trainer and eval) gets its filesystem from ``resolve``, the one place where
filesystems are built, from the ``run.storage`` settings (``StorageSettings``): endpoint, region,
transport, anonymous access, retries, timeouts. Credentials never come from a config file or a
manifest: the client's own chain finds them (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``~/.aws``, an instance role; ``GOOGLE_APPLICATION_CREDENTIALS`` or the metadata server for GCS).

Settings reach other processes through the environment (``VIDAL_STORAGE``, JSON): ``configure``
sets it, so local Ray workers, DataLoader workers and ``torchrun`` ranks inherit it, and
``worker_env()`` is what the driver puts in Ray's runtime env for the nodes of an attached cluster.

Writes are atomic: the data streams to a temp name (``.tmp-…``) that is renamed (locally) or copied
server-side onto the final name (object stores) only when the block completed. Why not stream
straight to the final key: pyarrow's S3 stream completes its multipart upload on ``close()``, also
when the writer failed half way (measured: the half object appears), and exposes no abort. So a
failed writer's temp object is deleted, a killed writer's upload never completes (nothing
appears; a bucket lifecycle rule reclaims unfinished uploads), and a temp object left by a kill
between upload and rename is never trusted and is removed at the next start (``remove_temp_files``).
Memory per writer is bounded by the stream's part buffer: S3 streams write parts in the foreground
(``background_writes=False``; with background writes, writing a 200 MB object held ~190 MB more
than it, see bench/RESULTS.md).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from functools import lru_cache
from typing import Any, Literal

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

TMP_PREFIX = ".tmp-"
ENV_VAR = "VIDAL_STORAGE"  # the settings as JSON, for processes that did not read the config
COPY_CHUNK = 8 << 20
COPY_WAIT_S = 300.0  # how long a slow server-side copy may take after the client gave up on it
CREDENTIAL_KEYS = (
    "access_key",
    "secret_key",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "token",
    "password",
    "credentials",
    "key",
    "secret",
)


class StorageSettings(BaseModel):
    """How to reach the object store of ``s3://`` / ``gs://`` roots (``run.storage``); no credentials."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    endpoint: str | None = Field(
        None,
        description="S3-compatible or GCS endpoint, e.g. http://127.0.0.1:9000 "
        "(MinIO); null: the provider's own (AWS_ENDPOINT_URL is honoured too)",
    )
    region: str | None = Field(
        None,
        description="S3 region (null: AWS_REGION, ~/.aws/config or the SDK's "
        "default); for GCS the location of buckets it creates",
    )
    scheme: Literal["https", "http"] | None = Field(
        None,
        description="transport when the endpoint has none (default https; http only for a local test server)",
    )
    anonymous: bool = Field(False, description="no credentials at all (public buckets)")
    retries: int = Field(3, ge=0, le=20, description="S3: attempts of a failed request (AWS standard retry)")
    retry_time_limit_s: float | None = Field(
        None, gt=0, description="GCS: how long to retry transient errors"
    )
    connect_timeout_s: float | None = Field(None, gt=0)
    request_timeout_s: float | None = Field(
        30.0,
        gt=0,
        description="a request silent this long is dropped "
        "(the SDK's default, 3 s, is short for server-side copies)",
    )
    ca_file: str | None = Field(None, description="CA bundle for TLS to a private endpoint")
    virtual_addressing: bool = Field(False, description="S3: bucket.host URLs instead of host/bucket")

    @model_validator(mode="before")
    @classmethod
    def _no_credentials(cls, data: Any) -> Any:
        if isinstance(data, dict):
            secret = [k for k in data if str(k).lower() in CREDENTIAL_KEYS]
            if secret:
                raise ValueError(
                    f"{', '.join(secret)}: credentials are never read from a config file; set AWS_ACCESS_KEY_ID "
                    "and AWS_SECRET_ACCESS_KEY (or GOOGLE_APPLICATION_CREDENTIALS) in the environment, "
                    "or use the platform's chain (~/.aws, an instance role)"
                )
        return data

    @model_validator(mode="after")
    def _endpoint_scheme(self) -> StorageSettings:
        if self.endpoint and "://" in self.endpoint:
            given = self.endpoint.split("://", 1)[0]
            if given not in ("http", "https"):
                raise ValueError(f"endpoint {self.endpoint!r}: the scheme must be http or https")
            if self.scheme and self.scheme != given:
                raise ValueError(f"endpoint {self.endpoint!r} says {given} but scheme is {self.scheme}")
        return self

    def transport(self) -> tuple[str | None, str | None]:
        """(scheme, host[:port]) of the endpoint; (None, None) for the provider's default."""
        if not self.endpoint:
            return self.scheme, None
        if "://" in self.endpoint:
            scheme, host = self.endpoint.split("://", 1)
            return scheme, host.rstrip("/")
        return self.scheme or "https", self.endpoint.rstrip("/")


_settings: StorageSettings | None = None


def configure(settings: StorageSettings | dict[str, Any] | None) -> StorageSettings:
    """Use these settings for every filesystem this process (and the processes it starts) builds."""
    global _settings
    s = settings if isinstance(settings, StorageSettings) else StorageSettings.model_validate(settings or {})
    _settings = s
    os.environ[ENV_VAR] = s.model_dump_json(exclude_defaults=True)
    _filesystem.cache_clear()
    return s


def settings() -> StorageSettings:
    """The settings in effect: those given to ``configure``, else ``$VIDAL_STORAGE``, else defaults."""
    global _settings
    if _settings is None:
        raw = os.environ.get(ENV_VAR, "").strip()
        try:
            _settings = StorageSettings.model_validate_json(raw) if raw else StorageSettings()
        except ValidationError as e:
            raise ValueError(f"${ENV_VAR} is not valid storage settings: {e.errors()[0]['msg']}") from None
    return _settings


def worker_env() -> dict[str, str]:
    """Environment variables that carry the storage settings to Ray workers (``runtime_env``)."""
    return {ENV_VAR: settings().model_dump_json(exclude_defaults=True)}


# -- the one place where filesystems are built ----------------------------------------------------
@lru_cache(maxsize=16)
def _filesystem(scheme: str, config_json: str, env_endpoint: str | None) -> pafs.FileSystem:
    s = StorageSettings.model_validate_json(config_json)
    if not s.endpoint and env_endpoint:
        s = s.model_copy(update={"endpoint": env_endpoint})
    transport, host = s.transport()
    if scheme == "s3":
        kw: dict[str, Any] = {
            "region": s.region,
            "anonymous": s.anonymous,
            "endpoint_override": host,
            "scheme": transport,
            "connect_timeout": s.connect_timeout_s,
            "request_timeout": s.request_timeout_s,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=s.retries),
            "force_virtual_addressing": s.virtual_addressing,
            "tls_ca_file_path": s.ca_file,
            "background_writes": False,  # bounded memory: a part is sent before the next is buffered
        }
        return pafs.S3FileSystem(**{k: v for k, v in kw.items() if v is not None})
    kw = {
        "anonymous": s.anonymous,
        "endpoint_override": host,
        "scheme": transport,
        "default_bucket_location": s.region,
        "retry_time_limit": datetime.timedelta(seconds=s.retry_time_limit_s)
        if s.retry_time_limit_s
        else None,
    }
    return pafs.GcsFileSystem(**{k: v for k, v in kw.items() if v is not None})


def is_remote(uri: str) -> bool:
    """True for object-store URIs (``scheme://``), False for local paths and ``file://``."""
    return "://" in uri and not uri.startswith("file://")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and in-filesystem path of ``uri`` (local paths are made absolute)."""
    if not is_remote(uri):
        local = uri[len("file://") :] if uri.startswith("file://") else uri
        return pafs.LocalFileSystem(), os.path.abspath(local)
    scheme, rest = uri.split("://", 1)
    if "?" in rest:
        raise ValueError(
            f"{uri}: options in the URI are not supported; set them in run.storage "
            "(endpoint, region, scheme, anonymous)"
        )
    if scheme not in ("s3", "gs", "gcs"):  # hdfs://, abfs://: pyarrow's own URI options, untested
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path
    env_endpoint = (
        os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if scheme == "s3"
        else None
    )
    fs = _filesystem(scheme, settings().model_dump_json(), env_endpoint)
    return fs, rest.strip("/")


def normalize(uri: str) -> str:
    """A canonical form of a run URI: absolute local path, or the remote URI without trailing '/'."""
    return uri.rstrip("/") if is_remote(uri) else resolve(uri)[1]


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with '/'."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def kind(uri: str) -> Literal["file", "dir"] | None:
    """``"file"``, ``"dir"`` (a directory, or a prefix with objects under it) or None when absent."""
    fs, path = resolve(uri)
    t = fs.get_file_info(path).type
    return "file" if t == pafs.FileType.File else "dir" if t == pafs.FileType.Directory else None


def exists(uri: str) -> bool:
    return kind(uri) is not None


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
        i.base_name
        for i in infos
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


# -- atomic writes --------------------------------------------------------------------------------
def temp_name(uri: str) -> str:
    """A private temp name beside ``uri`` (same directory, so the rename or copy stays local to it)."""
    parent, name = uri.rstrip("/").rsplit("/", 1)
    return f"{parent}/{TMP_PREFIX}{uuid.uuid4().hex}-{name}"


@contextlib.contextmanager
def open_atomic(uri: str) -> Iterator[Any]:
    """A writable stream whose file appears under ``uri`` only if the block completes.

    The data streams to a temp name (memory stays at one upload part on object stores), which is
    renamed (locally) or copied server-side onto ``uri`` at the end; on an error it is deleted.
    """
    fs, final = resolve(uri)
    _, tmp = resolve(temp_name(uri))
    if not is_remote(uri):  # object stores have no directories to make
        fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
    try:
        with fs.open_output_stream(tmp) as f:
            yield f
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise
    try:
        _publish(fs, tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise


def _publish(fs: pafs.FileSystem, tmp: str, final: str) -> None:
    """Rename ``tmp`` onto ``final`` (a server-side copy and a delete on object stores).

    A long copy can outlast the client: the AWS SDK drops a request that stays silent for
    ``request_timeout_s`` (3 s when unset, which a 200 MB copy on a busy server exceeded), and the
    server may still finish the copy. So a failed copy counts as done once ``final`` holds an object
    of the temp's size written after the temp was.
    """
    try:
        fs.move(tmp, final)
        return
    except OSError:
        if isinstance(fs, pafs.LocalFileSystem):
            raise
        source = fs.get_file_info(tmp)
        if source.type == pafs.FileType.NotFound:
            if fs.get_file_info(final).type == pafs.FileType.File:
                return  # copied and deleted; only the answer was lost
            raise
        deadline = time.monotonic() + COPY_WAIT_S
        while time.monotonic() < deadline:
            done = fs.get_file_info(final)
            if done.type == pafs.FileType.File and done.size == source.size and done.mtime >= source.mtime:
                fs.delete_file(tmp)
                return
            time.sleep(1.0)
        raise


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file atomically."""
    with open_atomic(uri) as f:
        f.write(data)


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def upload_file(local_path: str, uri: str) -> None:
    """Copy a local file to ``uri`` atomically, streamed in chunks (memory does not grow with its size)."""
    with open(local_path, "rb") as src, open_atomic(uri) as dst:
        shutil.copyfileobj(src, dst, COPY_CHUNK)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_parquet(uri: str, table: pa.Table) -> None:
    """Write one Parquet file atomically (zstd; binary media columns stay as written)."""
    with open_atomic(uri) as f:
        pq.write_table(table, f, compression="zstd")


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


def open_input_stream(uri: str):
    """A sequential binary stream of ``uri`` (no seeks: the cheapest read of a whole object)."""
    fs, path = resolve(uri)
    return fs.open_input_stream(path)
