"""Where candidate videos come from: URL / file lists and search terms (VIDAL-10M: ``stages.sources.vidal10m``).

Each reader turns its input into plain candidate dicts in the discover stage's columns; identity
(``video_id``) and filtering are the discover stage's business.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from contracts import store
from contracts.video_ids import YOUTUBE_ID, youtube_id, youtube_url
from stages.sources.text_rules import hashtags_in, parse_hashtags, resolve_manifest_path

READ_BATCH = 2048
CAPTION_COLUMNS = ("raw", "mplug", "polish_mplug", "sound_mplug")


# -- URL / file lists ------------------------------------------------------------------------------
# A list from the web is never clean: one bad line (invalid UTF-8, an unbalanced quote, a wrong column
# count, a JSON typo) is one failed row naming the list and the line, and the rest of the list runs.
# So lists are parsed here line by line (Python's csv / json) rather than by pyarrow's block readers,
# which stop the whole file at the first bad byte.
BAD_ROW = "_bad_row"  # key of a row that could not be read: its value is the reason
LIST_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
}
MAX_RECORD_LINES = 64  # a quoted value may span lines; an open quote longer than this is unbalanced


def list_format(uri: str) -> str | None:
    """``csv`` | ``tsv`` | ``parquet`` | ``jsonl`` from a list's name, or None for an unknown format."""
    lower = uri.lower()
    return next((kind for ext, kind in LIST_FORMATS.items() if lower.endswith(ext)), None)


def read_list(uri: str, columns: dict[str, str] | None = None) -> Iterator[list[dict[str, Any]]]:
    """Rows of a CSV / TSV / Parquet / JSONL list in batches, renamed by ``columns`` (ours -> theirs).

    A line that cannot be read is a row ``{BAD_ROW: "<list> line <n>: <why>"}`` in its place."""
    rename = {theirs: ours for ours, theirs in (columns or {}).items()}
    kind = list_format(uri)
    if kind is None:
        raise ValueError(f"{uri}: unknown list format (use .csv, .tsv, .parquet or .jsonl)")
    fs, path = store.resolve(uri)
    if kind == "parquet":
        with pq.ParquetFile(fs.open_input_file(path)) as f:
            first = 1
            for batch in f.iter_batches(batch_size=READ_BATCH):
                yield _renamed(_parquet_rows(batch, uri, first), rename)
                first += batch.num_rows
        return
    with fs.open_input_stream(path) as stream:
        rows = (
            _jsonl_rows(stream, uri)
            if kind == "jsonl"
            else _csv_rows(stream, uri, "\t" if kind == "tsv" else ",")
        )
        batch: list[dict[str, Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= READ_BATCH:
                yield _renamed(batch, rename)
                batch = []
        if batch:
            yield _renamed(batch, rename)


def _bad(uri: str, line: int, why: str) -> dict[str, Any]:
    return {BAD_ROW: f"{uri} line {line}: {why}"}


def _lines(stream: Any) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw line without its end) of a binary stream, read in 1 MiB chunks."""
    rest, n = b"", 0
    while chunk := stream.read(1 << 20):
        *lines, rest = (rest + chunk).split(b"\n")
        for line in lines:
            n += 1
            yield n, line.rstrip(b"\r")
    if rest:
        yield n + 1, rest.rstrip(b"\r")


def _decoded(raw: bytes) -> tuple[str | None, str]:
    try:
        return raw.decode("utf-8"), ""
    except UnicodeDecodeError as e:
        return None, f"invalid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"


def _csv_rows(stream: Any, uri: str, delimiter: str) -> Iterator[dict[str, Any]]:
    header: list[str] | None = None
    pending: list[tuple[int, str]] = []  # physical lines of a record whose quoted value is still open

    def records(lines: list[tuple[int, str]], at_end: bool) -> Iterator[dict[str, Any] | None]:
        """Parse what ``pending`` holds; None: the record continues on the next line."""
        nonlocal header
        while lines:
            first = lines[0][0]
            reader = csv.reader((t + "\n" for _, t in lines), delimiter=delimiter, strict=True)
            try:
                fields, why = next(reader, []), ""
                used = max(reader.line_num, 1)  # the physical lines this record took
            except csv.Error as e:
                if "unexpected end of data" in str(e) and not at_end and len(lines) < MAX_RECORD_LINES:
                    yield None
                    return
                fields, used = [], 1
                # over several lines, the quote the first one opened never closed where it should have
                unbalanced = "unexpected end" in str(e) or len(lines) > 1
                why = "unbalanced quote" if unbalanced else f"malformed quoting ({e})"
            if header is None:
                if why:
                    raise ValueError(f"{uri}: the header (line {first}) cannot be read: {why}")
                header = [h.strip().lstrip("\ufeff") for h in fields]
                del lines[:used]
                continue
            if not why and used == 1 and not lines[0][1].strip():
                fields = []  # a blank line
            elif not why and len(fields) != len(header):
                # a quoted value that closed lines later into a record of the wrong shape: the quote
                # on the first line was the mistake
                why = (
                    "unbalanced quote"
                    if used > 1
                    else f"{len(fields)} columns, expected {len(header)} (as in the header)"
                )
            if why:
                yield _bad(uri, first, why)
                del lines[0]  # the lines after a bad one are read again as records of their own
                continue
            if fields:
                yield dict(zip(header, fields))
            del lines[:used]

    def flush(at_end: bool) -> Iterator[dict[str, Any]]:
        for r in records(pending, at_end):
            if r is None:
                return
            yield r

    for n, raw in _lines(stream):
        text, why = _decoded(raw)
        if text is None:
            yield from flush(at_end=True)
            if header is None:
                raise ValueError(f"{uri}: the header line is not valid UTF-8")
            yield _bad(uri, n, why)
            continue
        pending.append((n, text))
        yield from flush(at_end=False)
    yield from flush(at_end=True)


def _jsonl_rows(stream: Any, uri: str) -> Iterator[dict[str, Any]]:
    for n, raw in _lines(stream):
        text, why = _decoded(raw)
        if text is not None and not text.strip():
            continue
        if text is not None:
            try:
                row = json.loads(text)
                why = "" if isinstance(row, dict) else f"a JSON {type(row).__name__}, not an object"
            except json.JSONDecodeError as e:
                why = f"not valid JSON ({e.msg} at column {e.colno})"
        yield _bad(uri, n, why) if why else row


def _parquet_rows(batch: pa.RecordBatch, uri: str, first: int) -> list[dict[str, Any]]:
    try:
        return batch.to_pylist()
    except UnicodeDecodeError:  # one row's invalid string: find it, keep the others
        rows = []
        for i in range(batch.num_rows):
            try:
                rows.extend(batch.slice(i, 1).to_pylist())
            except UnicodeDecodeError as e:
                rows.append(_bad(uri, first + i, f"invalid UTF-8 in a text value ({e.reason})"))
        return rows


def _renamed(rows: list[dict[str, Any]], rename: dict[str, str]) -> list[dict[str, Any]]:
    if not rename:
        return rows
    return [{rename.get(k, k): v for k, v in r.items()} for r in rows]


def caption_fields(row: dict[str, Any]) -> dict[str, Any]:
    """VIDAL caption columns a list row carries (``ofa`` as a list or a JSON list), others None."""
    out: dict[str, Any] = {k: (str(row[k]) if row.get(k) is not None else None) for k in CAPTION_COLUMNS}
    ofa = row.get("ofa")
    if isinstance(ofa, str):
        try:
            ofa = json.loads(ofa)
        except json.JSONDecodeError:
            ofa = [ofa]
    out["ofa"] = [str(c) for c in ofa] if isinstance(ofa, list) else None
    return out


def list_row_fields(row: dict[str, Any], base: str) -> dict[str, Any]:
    """The candidate fields of one list row (no id yet); relative paths are taken from ``base``."""
    path = str(row.get("path") or "").strip() or None
    if path and not store.is_remote(path) and not os.path.isabs(path) and not store.is_remote(base):
        path = os.path.normpath(os.path.join(base, path))
    duration = row.get("duration")
    try:
        duration = float(duration) if duration not in (None, "") else None
    except (TypeError, ValueError):
        duration = None
    title = row.get("title") or row.get("caption")
    return {
        "url": str(row.get("url") or "").strip() or None,
        "path": path,
        "title": str(title) if title is not None else None,
        "description": row.get("description"),
        "hashtags": parse_hashtags(row.get("hashtags")),
        "duration": duration,
        "uploader": row.get("uploader"),
        "upload_date": row.get("upload_date"),
        "license": row.get("license"),
        "language": row.get("language"),
        **caption_fields(row),
    }


# -- search terms ----------------------------------------------------------------------------------
def read_terms(name: str) -> list[str]:
    """Search terms, one per line (``#`` starts a comment), whitespace collapsed, without repeats."""
    fs, path = store.resolve(name) if store.is_remote(name) else (None, str(resolve_manifest_path(name)))
    if fs is not None:
        with fs.open_input_stream(path) as f:
            text = f.read().decode("utf-8")
    else:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    terms = (" ".join(line.split("#", 1)[0].split()) for line in text.splitlines())
    return list(dict.fromkeys(t for t in terms if t))


def search_query(term: str, prefix: str = "ytsearch", n: int = 20) -> str:
    """yt-dlp's search URL for a term: ``{prefix}{n}:{term}`` (e.g. ``ytsearch20:dog catching frisbee``)."""
    term = " ".join(term.split())
    if not term:
        raise ValueError("empty search term")
    return f"{prefix}{n}:{term}"


def search_options(
    *,
    socket_timeout: float,
    retries: int,
    cookies_file: str | None = None,
    user_agent: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """YoutubeDL parameters for flat search: metadata only, nothing downloaded, entries unresolved."""
    params: dict[str, Any] = {
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "skip_download": True,
        "extract_flat": True,
        "socket_timeout": socket_timeout,
        "extractor_retries": retries,
        "retries": retries,
        "ignoreerrors": False,
    }
    if cookies_file:
        params["cookiefile"] = cookies_file
    if user_agent:
        params["http_headers"] = {"User-Agent": user_agent}
    params.update(extra or {})
    return params


_search_clients = threading.local()


def run_search(query: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run one flat search with a YoutubeDL kept per thread; returns yt-dlp's playlist info dict."""
    import yt_dlp

    key = json.dumps(params, sort_keys=True, default=str)
    if getattr(_search_clients, "key", None) != key:
        _search_clients.ydl = yt_dlp.YoutubeDL(params)
        _search_clients.key = key
    info = _search_clients.ydl.extract_info(query, download=False)
    return _search_clients.ydl.sanitize_info(info) if info else {}


def _upload_date(entry: dict[str, Any]) -> str | None:
    if entry.get("upload_date"):
        return str(entry["upload_date"])
    ts = entry.get("timestamp") or entry.get("release_timestamp")
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(float(ts), tz=dt.timezone.utc).strftime("%Y%m%d")


def search_entry_fields(entry: dict[str, Any]) -> dict[str, Any] | None:
    """Candidate fields of one flat search entry; None for entries that are not videos (channels,
    playlists). ``row_filter`` says why a video must not be fetched (live, members only, ...)."""
    url = entry.get("url") or entry.get("webpage_url") or ""
    vid = entry.get("id") if entry.get("ie_key") == "Youtube" else youtube_id(url)
    if not vid or not YOUTUBE_ID.match(str(vid)):
        return None
    title = entry.get("title")
    description = entry.get("description")
    reason = None
    if entry.get("live_status") in ("is_live", "is_upcoming", "post_live"):
        reason = f"live_status {entry['live_status']}: not a finished short video"
    elif entry.get("availability") in ("premium_only", "subscriber_only", "needs_auth", "private"):
        reason = f"availability {entry['availability']}: not publicly downloadable"
    duration = entry.get("duration")
    return {
        "video_id": f"youtube-{vid}",
        "url": youtube_url(vid),
        "title": title,
        "description": description,
        "hashtags": hashtags_in(title, description),
        "duration": float(duration) if duration is not None else None,
        "uploader": entry.get("uploader") or entry.get("channel"),
        "upload_date": _upload_date(entry),
        "license": entry.get("license"),
        "row_filter": reason,
    }


def search_result_rows(info: dict[str, Any], query: str) -> list[dict[str, Any]]:
    """Candidate rows of a flat search result (yt-dlp's playlist dict), in result order."""
    rows = []
    for entry in info.get("entries") or []:
        if isinstance(entry, dict) and (fields := search_entry_fields(entry)):
            rows.append({**fields, "query": query, "source": "search"})
    return rows
