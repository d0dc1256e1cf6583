"""Discover stage: turns inputs into candidate rows with stable ``video_id``s.

Inputs (``discover.inputs``) are CSV / Parquet / JSONL lists with a ``path`` or ``url`` column and
optional ``title``, ``hashtags``, ``description`` columns: the user's own videos (``--input LIST``)
or the demo's. Relative paths are taken relative to the list file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from pydantic import Field

from pipeline import store
from stages.base import RowError, Stage, StageConfig

CANDIDATE_SCHEMA = pa.schema([
    ("url", pa.string()),
    ("path", pa.string()),
    ("title", pa.string()),
    ("description", pa.string()),
    ("hashtags", pa.list_(pa.string())),
    ("duration", pa.float64()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("uploader", pa.string()),
    ("upload_date", pa.string()),
    ("license", pa.string()),
    ("query", pa.string()),
    ("source", pa.string()),
])
READ_BATCH = 2048


class DiscoverConfig(StageConfig):
    batch_size: int = 1024
    inputs: list[str] = Field(default_factory=list, description="CSV/Parquet/JSONL lists of videos")


def sha1_id(prefix: str, text: str) -> str:
    """``{prefix}-{sha1(text)[:16]}``: a stable id that never carries the text itself."""
    return f"{prefix}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:16]}"


def parse_hashtags(value: Any) -> list[str]:
    """Hashtags from a list, a JSON list, or a string like ``"#cat #funny"`` / ``"cat,funny"``."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = re.split(r"[\s,]+", text.strip("[]"))
        else:
            value = re.split(r"[\s,]+", text)
    tags = [str(t).strip().lstrip("#").strip() for t in value]
    return [t for t in dict.fromkeys(tags) if t]


def read_list(uri: str) -> Iterator[list[dict[str, Any]]]:
    """Rows of a CSV / Parquet / JSONL list, in batches, without loading a large list at once."""
    fs, path = store.resolve(uri)
    lower = path.lower()
    if lower.endswith(".parquet"):
        with pq.ParquetFile(fs.open_input_file(path)) as f:
            for batch in f.iter_batches(batch_size=READ_BATCH):
                yield batch.to_pylist()
        return
    with fs.open_input_stream(path) as stream:
        if lower.endswith((".jsonl", ".json", ".ndjson")):
            reader = pajson.open_json(stream)
        elif lower.endswith((".csv", ".tsv")):
            parse = pacsv.ParseOptions(delimiter="\t" if lower.endswith(".tsv") else ",")
            convert = pacsv.ConvertOptions(column_types={"title": pa.string(), "hashtags": pa.string(),
                                                         "description": pa.string()})
            reader = pacsv.open_csv(stream, parse_options=parse, convert_options=convert)
        else:
            raise ValueError(f"{uri}: unknown list format (use .csv, .tsv, .parquet or .jsonl)")
        for batch in reader:
            yield batch.to_pylist()


class DiscoverStage(Stage):
    name = "discover"
    reads = None
    Config = DiscoverConfig
    schema = CANDIDATE_SCHEMA
    config: DiscoverConfig

    def plan_inputs(self) -> list[dict[str, Any]]:
        for uri in self.config.inputs:
            if not store.exists(uri):
                raise FileNotFoundError(f"discover.inputs: list not found: {uri}")
        return [{"kind": "list", "uri": store.normalize(u)} for u in self.config.inputs]

    def read_inputs(self, item: dict[str, Any]) -> Iterator[pa.Table]:
        uri = item["uri"]
        base = os.path.dirname(uri)
        for rows in read_list(uri):
            out = [self.candidate_from_list_row(r, base, uri) for r in rows]
            yield pa.Table.from_pylist(out, schema=pa.schema([("video_id", pa.string()), ("row_error", pa.string()),
                                                              *CANDIDATE_SCHEMA]))

    def candidate_from_list_row(self, row: dict[str, Any], base: str, list_uri: str) -> dict[str, Any]:
        url = (row.get("url") or "").strip() or None
        path = (row.get("path") or "").strip() or None
        out: dict[str, Any] = {
            "title": row.get("title") or row.get("caption"),
            "description": row.get("description"),
            "hashtags": parse_hashtags(row.get("hashtags")),
            "source": "files",
            "row_error": None,
        }
        if path:
            if not store.is_remote(path) and not os.path.isabs(path) and not store.is_remote(base):
                path = os.path.normpath(os.path.join(base, path))
            out.update(path=path, video_id=sha1_id("file", path))
        elif url:
            out.update(url=url, video_id=sha1_id("url", url))
        else:
            out.update(video_id=sha1_id("row", json.dumps(row, sort_keys=True, default=str)),
                       row_error=f"list row has neither 'path' nor 'url' ({list_uri})")
        return out

    def process(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        return self.rows_to_table(self.process_rows(rows))

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        if row.get("row_error"):
            raise RowError(row["row_error"])
        return row
