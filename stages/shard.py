"""Shard stage: joins the ok rows of every stage run so far and writes WebDataset tars.

Each tar holds whole samples in the format of ``contracts.shard_format``, a ``txt`` caption among them
(``shard.txt_field``, then the format's fallback order) for the loaders that read ``txt``; beside it
an index Parquet lists its keys, urls, statuses and text fields, and a ``_stats.json`` its counts. A
tar is cut by sample count or by bytes, whichever comes first.

Every side effect here is safe to repeat, because Ray retries batches and restarts actors on its own
and drivers get killed. A batch's rows are sorted by ``video_id`` and cut into tars deterministically,
and each tar is named from the ids it holds (``shard_format.shard_name_for``): a retried batch writes
the very same names over themselves, never new ones. A tar is committed by appearing: its index is
written first, then the tar (atomically), so a tar always has its index and a lone index is an
uncommitted leftover (the stats file is written with the index, before the tar). Before writing, and again after, the writer checks that its run still holds the
root's lock (``contracts.lock``): the orphaned actors of a killed driver cannot publish once another
driver took over, and what they published just before is withdrawn. At the start and the end of the
stage the driver reconciles the tars with the manifest (``stages.shards.reconcile``): leftovers
removed, a video held by two tars kept in one, tars that lack manifest rows re-indexed.
"""

from __future__ import annotations

import errno
import io
import re
import tarfile
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from contracts import lock, store
from contracts import shard_format as fmt
from contracts.shard_format import raw_text
from contracts.status import FAILED, OK, transient
from stages.base import Stage, StageConfig, run_isolated

SHARD_RE = re.compile(rf"^({fmt.SHARD_NAME_PATTERN})\.tar$")
INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("status", pa.string()),
        ("title", pa.string()),
        ("raw", pa.string()),
        ("ofa", pa.list_(pa.string())),
        ("mplug", pa.string()),
        ("polish_mplug", pa.string()),
        ("sound_mplug", pa.string()),
        ("asr", pa.string()),
        ("txt", pa.string()),
        ("has_audio", pa.bool_()),
        ("has_depth", pa.bool_()),
        ("has_ir", pa.bool_()),
        ("bytes", pa.int64()),
    ]
)
# Local reasons a tar could not be written that a plain rerun should retry (see contracts.status).
TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EIO}


class ShardConfig(StageConfig):
    batch_size: int = Field(1000, ge=1, description="rows handed to one writer call")
    samples_per_shard: int = Field(1000, ge=1)
    max_shard_bytes: int = Field(1 << 30, ge=1 << 16, description="a tar is cut before passing this size")
    include_video: bool = Field(False, description="also store the source mp4 in each sample")
    require_complete: bool = Field(True, description="only videos ok in every stage run so far")
    txt_field: str = Field(
        "polish_mplug",
        description=f"caption of each sample's txt member, one of {', '.join(fmt.TXT_FIELDS)}; "
        f"a sample without it falls back to {' -> '.join(fmt.TXT_FALLBACK)}",
    )

    @field_validator("txt_field")
    @classmethod
    def _known_field(cls, v: str) -> str:
        if v not in fmt.TXT_FIELDS:
            raise ValueError(f"unknown text field {v!r}; choose one of {', '.join(fmt.TXT_FIELDS)}")
        return v


class RunFenced(RuntimeError):
    """This writer's run no longer holds the root's lock: another driver took over."""


def shard_names(shard_dir: str) -> list[str]:
    """Names (without ``.tar``) of the committed tars in ``shard_dir``, sorted."""
    names = [u.rsplit("/", 1)[1] for u in store.list_files(shard_dir, suffix=".tar")]
    return [m.group(1) for n in names if (m := SHARD_RE.match(n))]


def index_names(shard_dir: str) -> list[str]:
    """Names of the shard indexes in ``shard_dir`` (manifest parts excluded), sorted."""
    names = [u.rsplit("/", 1)[1][: -len(".parquet")] for u in store.list_files(shard_dir, suffix=".parquet")]
    return [n for n in names if SHARD_RE.match(f"{n}.tar")]


def read_index(shard_dir: str, name: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = store.resolve(store.join(shard_dir, f"{name}.parquet"))
    return pq.read_table(path, filesystem=fs, columns=columns)


def sample_url(row: dict[str, Any]) -> str | None:
    """Where the video came from: its URL, or a local input's path as a ``file://`` URL."""
    return row.get("url") or (f"file://{row['path']}" if row.get("path") else None)


def sample_files(row: dict[str, Any], include_video: bool, txt_field: str | None = None) -> dict[str, bytes]:
    """The tar members (suffix -> bytes) of one video's sample."""
    files: dict[str, bytes] = {}
    for modality, column in (("rgb", "frames"), ("depth", "depth"), ("ir", "ir")):
        for i, data in enumerate(row.get(column) or []):
            files[fmt.frame_key(modality, i)] = data
    if row.get("audio"):
        files[fmt.AUDIO_KEY] = row["audio"]
    if include_video and row.get("media"):
        files[fmt.VIDEO_KEY] = store.read_bytes(row["media"])
    models = {
        k[: -len(fmt.MODEL_COLUMN_SUFFIX)]: v
        for k, v in row.items()
        if k.endswith(fmt.MODEL_COLUMN_SUFFIX) and v
    }
    meta = {**row, "raw": raw_text(row), "models": models, "url": sample_url(row)}
    if (text := fmt.sample_text(meta, txt_field)) is not None:
        files[fmt.TXT_KEY] = text.encode("utf-8")
    files[fmt.JSON_KEY] = fmt.encode_json(meta)
    return files


def write_tar(uri: str, samples: Iterable[tuple[str, dict[str, bytes]]]) -> None:
    """Write one tar of (key, files) samples atomically, streamed to its file; members in the order given."""
    with store.open_atomic(uri) as f, tarfile.open(fileobj=f, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for key, files in samples:
            for suffix, data in files.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size, info.mtime, info.mode = len(data), 0, 0o444  # same bytes on every retry
                tar.addfile(info, io.BytesIO(data))


def read_tar_samples(uri: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, files) per sample of a tar, streamed; members of one sample are adjacent."""
    key, files = None, {}
    with store.open_input(uri) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            k, suffix = member.name.split(".", 1)
            if k != key and key is not None:
                yield key, files
                files = {}
            key = k
            files[suffix] = tar.extractfile(member).read()
    if key is not None:
        yield key, files


def index_row(key: str, row: dict[str, Any], files: dict[str, bytes], nbytes: int) -> dict[str, Any]:
    return {
        "key": key,
        "url": sample_url(row),
        "status": OK,
        "title": row.get("title"),
        "raw": raw_text(row),
        "ofa": row.get("ofa"),
        "mplug": row.get("mplug"),
        "polish_mplug": row.get("polish_mplug"),
        "sound_mplug": row.get("sound_mplug"),
        "asr": row.get("asr"),
        "txt": files[fmt.TXT_KEY].decode("utf-8") if fmt.TXT_KEY in files else None,
        "has_audio": fmt.AUDIO_KEY in files,
        "has_depth": fmt.frame_key("depth", 0) in files,
        "has_ir": fmt.frame_key("ir", 0) in files,
        "bytes": nbytes,
    }


def shard_stats(name: str, samples: Iterable[tuple[str, dict[str, bytes]]]) -> dict[str, Any]:
    """The ``{name}_stats.json`` of a tar: samples, member bytes, and how many samples hold each member
    (frames counted once per modality: ``rgb``, ``depth``, ``ir``). The same bytes on every retry."""
    count, nbytes, fields = 0, 0, {}
    for _, files in samples:
        count += 1
        nbytes += sum(len(data) for data in files.values())
        for group in {suffix.split(".", 1)[0] for suffix in files}:
            fields[group] = fields.get(group, 0) + 1
    return {"shard": name, "count": count, "bytes": nbytes, "fields": dict(sorted(fields.items()))}


def commit_shard(
    shard_dir: str, samples: list[tuple[str, dict[str, bytes]]], index: pa.Table, root: str, token: str | None
) -> str:
    """Publish one tar and its index under the name of its keys; returns the name. Safe to repeat."""
    name = fmt.shard_name_for([k for k, _ in samples])
    tar_uri, index_uri = store.join(shard_dir, f"{name}.tar"), store.join(shard_dir, f"{name}.parquet")
    stats_uri = store.join(shard_dir, fmt.stats_name(name))
    if not lock.holds(root, token):
        raise RunFenced(f"shard {name}: this run no longer holds the lock on {root}; not publishing")
    store.write_parquet(index_uri, index)
    store.write_json(stats_uri, shard_stats(name, samples))
    try:
        write_tar(tar_uri, samples)
    except BaseException:
        store.remove(index_uri)
        store.remove(stats_uri)
        raise
    if not lock.holds(root, token):  # taken over while we wrote: withdraw, the new run does these rows
        store.remove(tar_uri)
        store.remove(index_uri)
        store.remove(stats_uri)
        raise RunFenced(f"shard {name}: the lock on {root} was taken over while writing; withdrawn")
    return name


class ShardStage(Stage):
    name = "shard"
    upstream = ("probe",)
    optional_upstream = ("discover", "download", "caption", "asr", "enhance", "depth", "infrared", "score")
    reads = None
    Config = ShardConfig
    uses_model = True  # one writer at a time (shard.actors max) bounds the samples held in memory
    schema = pa.schema([("shard", pa.string()), ("bytes", pa.int64())])
    config: ShardConfig

    @classmethod
    def plan_upstream(cls, config: Any, present: list[str]) -> tuple[list[str], list[str]]:
        others = [s for s in cls.optional_upstream if s in present]
        if config.shard.require_complete:
            return [*cls.upstream, *others], []
        return list(cls.upstream), others

    def reconcile(self) -> dict[str, int]:
        from stages.shards.reconcile import reconcile

        self._tally: dict[str, int] = {}
        return reconcile(self.context.root, self.name, self._tally)

    def setup(self) -> None:
        self.dir = store.join(self.context.root, self.name)

    def rows(self, batch: pa.Table) -> Iterator[dict[str, Any]]:
        """The batch's rows sorted by video_id, as dicts, converted a slice at a time (media columns are
        large). Sorted, so that a retried batch is cut into the same tars whatever order it came in."""
        order = pc.sort_indices(batch["video_id"])
        for start in range(0, batch.num_rows, 32):
            yield from batch.take(order.slice(start, 32)).to_pylist()

    def process(self, batch: pa.Table) -> pa.Table:
        # Samples are built as they are written: at most one tar's worth of them is in memory.
        c = self.config
        out: list[dict[str, Any]] = []
        current: list[dict[str, Any]] = []
        size = 0
        for r in self.rows(batch):
            b = run_isolated(
                r["video_id"], lambda r=r: {"files": sample_files(r, c.include_video, c.txt_field), "row": r}
            )
            if b["status"] != OK:
                out.append(b)
                continue
            n = sum(len(v) for v in b["files"].values()) + 512 * (len(b["files"]) + 1)
            if current and (len(current) >= c.samples_per_shard or size + n > c.max_shard_bytes):
                out += self._flush(current)
                current, size = [], 0
            b["bytes"] = n
            current.append(b)
            size += n
        if current:
            out += self._flush(current)
        return self.rows_to_table(out)

    def _flush(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        index = pa.Table.from_pylist(
            [index_row(b["video_id"], b["row"], b["files"], b["bytes"]) for b in items], schema=INDEX_SCHEMA
        )
        try:
            name = commit_shard(
                self.dir,
                [(b["video_id"], b["files"]) for b in items],
                index,
                self.context.root,
                self.context.run_token,
            )
        except OSError as e:
            if e.errno not in TRANSIENT_ERRNOS:
                raise
            # a full disk or a lost permission: failed rows that a plain rerun retries
            reason = transient(f"writing the shard failed: {e.strerror or e}")
            return [{"video_id": b["video_id"], "status": FAILED, "error": reason} for b in items]
        return [
            {"video_id": b["video_id"], "status": OK, "error": None, "shard": name, "bytes": b["bytes"]}
            for b in items
        ]

    def summary(self) -> dict[str, Any]:
        """The shards after the stage end's reconcile, which counted them (each index read once); read
        here only when no reconcile ran in this process."""
        shard_dir = store.join(self.context.root, self.name)
        tally = getattr(self, "_tally", None)
        if not tally:
            names = shard_names(shard_dir)
            tables = [read_index(shard_dir, name, ["bytes"]) for name in names]
            tally = {
                "shards": len(names),
                "samples": sum(len(t) for t in tables),
                "bytes": sum(sum(t["bytes"].to_pylist()) for t in tables),
            }
        return {**tally, "dir": shard_dir}
