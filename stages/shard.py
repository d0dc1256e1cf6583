"""Shard stage: joins the ok rows of every stage run so far and writes WebDataset tars.

Each tar (``NNNNN.tar``) holds whole samples in the format of ``stages.shard_format``; beside it
``NNNNN.parquet`` lists its keys and text fields. A tar is cut by sample count or by bytes,
whichever comes first, and written atomically. Shard numbers come from one counter per shard
directory, so parallel writers never collide and a resumed run continues the numbering.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from pydantic import Field

from pipeline import store
from stages import shard_format as fmt
from stages.base import OK, Stage, StageConfig, run_isolated

SHARD_RE = re.compile(rf"^(\d{{{fmt.SHARD_NAME_DIGITS}}})\.tar$")
INDEX_SCHEMA = pa.schema([
    ("key", pa.string()), ("title", pa.string()), ("raw", pa.string()), ("ofa", pa.list_(pa.string())),
    ("mplug", pa.string()), ("polish_mplug", pa.string()), ("sound_mplug", pa.string()), ("asr", pa.string()),
    ("has_audio", pa.bool_()), ("has_depth", pa.bool_()), ("has_ir", pa.bool_()), ("bytes", pa.int64()),
])


class ShardConfig(StageConfig):
    batch_size: int = Field(1000, ge=1, description="rows handed to one writer call")
    samples_per_shard: int = Field(1000, ge=1)
    max_shard_bytes: int = Field(1 << 30, ge=1 << 16, description="a tar is cut before passing this size")
    include_video: bool = Field(False, description="also store the source mp4 in each sample")
    require_complete: bool = Field(True, description="only videos ok in every stage run so far")


def existing_shard_indexes(shard_dir: str) -> list[int]:
    names = [u.rsplit("/", 1)[1] for u in store.list_files(shard_dir, suffix=".tar")]
    return sorted(int(m.group(1)) for n in names if (m := SHARD_RE.match(n)))


class _Counter:
    """Hands out shard numbers; a Ray actor when Ray is running, else a plain object."""

    def __init__(self, start: int):
        self.value = start

    def next(self) -> int:
        self.value += 1
        return self.value - 1


def _counter_name(shard_dir: str) -> str:
    return f"vidal-shard-counter-{hashlib.sha1(shard_dir.encode()).hexdigest()[:16]}"


def _next_start(shard_dir: str) -> int:
    return (existing_shard_indexes(shard_dir) or [-1])[-1] + 1


def raw_text(row: dict[str, Any]) -> str | None:
    """VIDAL's ``raw``: the released one when imported, else the title followed by its hashtags."""
    if row.get("raw"):
        return row["raw"]
    tags = " ".join(f"#{t}" for t in row.get("hashtags") or [])
    text = " ".join(x for x in (row.get("title") or "", tags) if x).strip()
    return text or None


def sample_files(row: dict[str, Any], include_video: bool) -> dict[str, bytes]:
    """The tar members (suffix -> bytes) of one video's sample."""
    files: dict[str, bytes] = {}
    for modality, column in (("rgb", "frames"), ("depth", "depth"), ("ir", "ir")):
        for i, data in enumerate(row.get(column) or []):
            files[fmt.frame_key(modality, i)] = data
    if row.get("audio"):
        files[fmt.AUDIO_KEY] = row["audio"]
    if include_video and row.get("media"):
        files[fmt.VIDEO_KEY] = store.read_bytes(row["media"])
    models = {k[: -len(fmt.MODEL_COLUMN_SUFFIX)]: v for k, v in row.items()
              if k.endswith(fmt.MODEL_COLUMN_SUFFIX) and v}
    meta = {**row, "raw": raw_text(row), "models": models,
            "url": row.get("url") or (f"file://{row['path']}" if row.get("path") else None)}
    files[fmt.JSON_KEY] = fmt.encode_json(meta)
    return files


def write_tar(uri: str, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    """Write one tar of (key, files) samples atomically, streamed to its file; members in the order given."""
    now = time.time()
    with store.open_atomic(uri) as f, tarfile.open(fileobj=f, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for key, files in samples:
            for suffix, data in files.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size, info.mtime, info.mode = len(data), now, 0o444
                tar.addfile(info, io.BytesIO(data))


class ShardStage(Stage):
    name = "shard"
    upstream = ("probe",)
    optional_upstream = ("discover", "download", "caption", "asr", "enhance", "depth", "infrared")
    reads = None
    Config = ShardConfig
    uses_model = True  # one writer actor holds the shard counter handle
    schema = pa.schema([("shard", pa.string()), ("bytes", pa.int64())])
    config: ShardConfig

    @classmethod
    def plan_upstream(cls, config: Any, present: list[str]) -> tuple[list[str], list[str]]:
        others = [s for s in cls.optional_upstream if s in present]
        if config.shard.require_complete:
            return [*cls.upstream, *others], []
        return list(cls.upstream), others

    def prepare(self) -> None:
        # On the driver: one counter actor per shard directory, alive for this stage's run.
        shard_dir = store.join(self.context.root, self.name)
        if ray.is_initialized():
            self._counter = ray.remote(_Counter).options(name=_counter_name(shard_dir), num_cpus=0,
                                                         get_if_exists=True).remote(_next_start(shard_dir))

    def finish(self) -> None:
        if getattr(self, "_counter", None) is not None:
            ray.kill(self._counter)

    def setup(self) -> None:
        self.dir = store.join(self.context.root, self.name)
        if ray.is_initialized():
            actor = ray.get_actor(_counter_name(self.dir))
            self.next_index = lambda: ray.get(actor.next.remote())
        else:
            self.next_index = _Counter(_next_start(self.dir)).next

    def rows(self, batch: pa.Table) -> Iterator[dict[str, Any]]:
        """The batch's rows as dicts, converted a slice at a time (the media columns are large)."""
        for start in range(0, batch.num_rows, 32):
            yield from batch.slice(start, 32).to_pylist()

    def process(self, batch: pa.Table) -> pa.Table:
        # Samples are built as they are written: at most one tar's worth of them is in memory.
        c = self.config
        out: list[dict[str, Any]] = []
        current: list[dict[str, Any]] = []
        size = 0
        for r in self.rows(batch):
            b = run_isolated(r["video_id"], lambda r=r: {"files": sample_files(r, c.include_video), "row": r})
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
        name = fmt.shard_name(self.next_index())
        write_tar(store.join(self.dir, f"{name}.tar"), [(b["video_id"], b["files"]) for b in items])
        index = []
        for b in items:
            r, files = b["row"], b["files"]
            index.append({
                "key": b["video_id"], "title": r.get("title"), "raw": raw_text(r), "ofa": r.get("ofa"),
                "mplug": r.get("mplug"), "polish_mplug": r.get("polish_mplug"),
                "sound_mplug": r.get("sound_mplug"), "asr": r.get("asr"),
                "has_audio": fmt.AUDIO_KEY in files, "has_depth": fmt.frame_key("depth", 0) in files,
                "has_ir": fmt.frame_key("ir", 0) in files, "bytes": b["bytes"],
            })
        store.write_parquet(store.join(self.dir, f"{name}.parquet"), pa.Table.from_pylist(index, schema=INDEX_SCHEMA))
        return [{"video_id": b["video_id"], "status": OK, "error": None, "shard": name, "bytes": b["bytes"]}
                for b in items]

    def summary(self) -> dict[str, Any]:
        shard_dir = store.join(self.context.root, self.name)
        indexes = store.list_files(shard_dir, suffix=".parquet")
        indexes = [u for u in indexes if SHARD_RE.match(u.rsplit("/", 1)[1].replace(".parquet", ".tar"))]
        total, nbytes = 0, 0
        for u in indexes:
            fs, path = store.resolve(u)
            t = pq.read_table(path, filesystem=fs, columns=["bytes"])
            total += len(t)
            nbytes += sum(t["bytes"].to_pylist())
        return {"shards": len(indexes), "samples": total, "bytes": nbytes, "dir": shard_dir}
