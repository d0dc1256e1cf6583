"""Where candidate videos come from: URL / file lists and search terms (VIDAL-10M: ``stages.vidal10m``).

Each reader turns its input into plain candidate dicts in the discover stage's columns; identity
(``video_id``) and filtering are the discover stage's business.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from pipeline import store
from stages.text_rules import hashtags_in, parse_hashtags, resolve_manifest_path
from stages.video_ids import YOUTUBE_ID, youtube_id, youtube_url

READ_BATCH = 2048
TEXT_COLUMNS = ("url", "path", "title", "caption", "hashtags", "description", "uploader", "upload_date",
                "license", "language", "raw", "mplug", "polish_mplug", "sound_mplug")
CAPTION_COLUMNS = ("raw", "mplug", "polish_mplug", "sound_mplug")


# -- URL / file lists ------------------------------------------------------------------------------
def read_list(uri: str, columns: dict[str, str] | None = None) -> Iterator[list[dict[str, Any]]]:
    """Rows of a CSV / TSV / Parquet / JSONL list in batches, renamed by ``columns`` (ours -> theirs)."""
    rename = {theirs: ours for ours, theirs in (columns or {}).items()}
    fs, path = store.resolve(uri)
    lower = path.lower()
    if lower.endswith(".parquet"):
        with pq.ParquetFile(fs.open_input_file(path)) as f:
            for batch in f.iter_batches(batch_size=READ_BATCH):
                yield _renamed(batch.to_pylist(), rename)
        return
    with fs.open_input_stream(path) as stream:
        if lower.endswith((".jsonl", ".json", ".ndjson")):
            reader = pajson.open_json(stream)
        elif lower.endswith((".csv", ".tsv")):
            parse = pacsv.ParseOptions(delimiter="\t" if lower.endswith(".tsv") else ",", newlines_in_values=True)
            # Text columns stay text even when a value looks like a number ("1984", "2001").
            names = {*TEXT_COLUMNS, *rename}
            convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in names})
            reader = pacsv.open_csv(stream, parse_options=parse, convert_options=convert)
        else:
            raise ValueError(f"{uri}: unknown list format (use .csv, .tsv, .parquet or .jsonl)")
        for batch in reader:
            yield _renamed(batch.to_pylist(), rename)


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


def search_options(*, socket_timeout: float, retries: int, cookies_file: str | None = None,
                   user_agent: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """YoutubeDL parameters for flat search: metadata only, nothing downloaded, entries unresolved."""
    params: dict[str, Any] = {
        "quiet": True, "no_warnings": True, "noprogress": True, "skip_download": True,
        "extract_flat": True, "socket_timeout": socket_timeout, "extractor_retries": retries,
        "retries": retries, "ignoreerrors": False,
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
