"""Discover stage: turns inputs into candidate rows with stable ``video_id``s, filtered and deduplicated.

Three inputs, any mix of them in one run:

- ``discover.inputs``: CSV / TSV / Parquet / JSONL lists with a ``url`` or ``path`` column and
  optional ``title`` (or ``caption``), ``hashtags``, ``description``, ``duration`` and VIDAL caption
  columns; ``discover.columns`` maps other column names (``{url: contentUrl, title: name}``).
  ``--input LIST`` sets it. Relative paths are taken relative to the list file.
- ``discover.search_terms`` (a file, one term per line) and ``discover.terms``: each term is searched
  with yt-dlp's search syntax (``ytsearch20:term``), flat (metadata only). Terms already searched in
  this run root are not searched again unless ``discover.research_done_terms``.
- ``discover.vidal10m``: the released VIDAL-10M JSON, streamed; its captions travel with the rows.

Filters (each records why a row was ``filtered``): the duration cap on every row whose duration is
known; for rows from ``discover.filter_sources`` (search results by default) also unknown duration,
the title/hashtag rule, stop words and language. Duplicates across terms, lists and batches are
dropped by a run-wide claim on the id (``stages.sources.dedup``); the runner skips ids of earlier runs.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from contracts import manifest, store
from contracts.status import OK
from contracts.video_ids import sha1_id, url_problem, video_id_for_path, video_id_for_url
from stages.base import RowError, RowFiltered, Stage, StageConfig, run_isolated
from stages.sources.dedup import RunDedup, collect_stats
from stages.sources.lists import (
    BAD_ROW,
    list_row_fields,
    read_list,
    read_terms,
    run_search,
    search_options,
    search_query,
    search_result_rows,
)
from stages.sources.text_rules import clean_tags, guess_language, load_stopwords, title_words
from stages.sources.vidal10m import read_vidal10m
from stages.web.politeness import RateLimit, run_scoped_name

CANDIDATE_SCHEMA = pa.schema(
    [
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
        ("source", pa.string()),  # files | urls | search | vidal10m
        ("language", pa.string()),
        # VIDAL-10M's released text, carried so that a rebuild can skip the caption stages
        ("raw", pa.string()),
        ("mplug", pa.string()),
        ("polish_mplug", pa.string()),
        ("ofa", pa.list_(pa.string())),
        ("sound_mplug", pa.string()),
        ("folder", pa.string()),
    ]
)
# What read_inputs yields: the candidate columns plus why a row must fail or be filtered.
INPUT_SCHEMA = pa.schema(
    [("video_id", pa.string()), ("row_error", pa.string()), ("row_filter", pa.string()), *CANDIDATE_SCHEMA]
)
READ_BATCH = 2048


class DiscoverConfig(StageConfig):
    batch_size: int = 1024
    inputs: list[str] = Field(default_factory=list, description="CSV/TSV/Parquet/JSONL lists of videos")
    columns: dict[str, str] = Field(default_factory=dict, description="our column -> the list's column")
    search_terms: str | None = Field(None, description="file of search terms, one per line")
    terms: list[str] = Field(default_factory=list, description="search terms given inline")
    search_prefix: str = Field("ytsearch", description="yt-dlp search key: ytsearch, ytsearchdate, ...")
    results_per_term: int = Field(20, ge=1, le=1000)
    terms_per_task: int = Field(8, ge=1, description="terms searched by one read task")
    search_threads: int = Field(4, ge=1, description="concurrent searches inside one task")
    search_rate_limit: float | None = Field(0.5, gt=0, description="searches per second over the run")
    research_done_terms: bool = Field(False, description="search again terms this root already has")
    vidal10m: list[str] = Field(default_factory=list, description="VIDAL-10M metadata JSON file(s)")
    vidal10m_limit: int | None = Field(None, ge=1, description="read only the first N entries per file")
    max_duration: float | None = Field(20.0, gt=0, description="seconds; VIDAL's cap")
    allow_unknown_duration: bool = True
    min_title_words: int = Field(2, ge=0, description="fewer title words and no hashtags: filtered")
    stopwords: str | None = Field("manifests/stopwords.txt", description="platform-noise words and tags")
    languages: list[str] = Field(default_factory=list, description="ISO 639-1 codes to keep; [] keeps all")
    allow_unknown_language: bool = True
    filter_sources: list[str] = Field(
        default_factory=lambda: ["search"], description="sources the text/language rules apply to"
    )
    dedup: bool = Field(True, description="drop repeats across terms, lists and batches in a run")
    dedup_shards: int = Field(1, ge=1, description="dedup actors (about 120 MB per 10 M ids in all)")
    socket_timeout_s: float = Field(20.0, gt=0)
    extractor_retries: int = Field(3, ge=0)
    cookies_file: str | None = None
    user_agent: str | None = None
    ytdlp_options: dict[str, Any] = Field(default_factory=dict, description="extra YoutubeDL parameters")

    def has_inputs(self) -> bool:
        """Whether any input is configured (lists, search terms or VIDAL-10M files)."""
        return bool(self.inputs or self.search_terms or self.terms or self.vidal10m)

    @field_validator("search_prefix")
    @classmethod
    def _search_key(cls, v: str) -> str:
        if not v.isalnum() or not v.islower():
            raise ValueError("a yt-dlp search key is lower-case letters and digits, e.g. ytsearch")
        return v

    @field_validator("filter_sources")
    @classmethod
    def _known_sources(cls, v: list[str]) -> list[str]:
        unknown = set(v) - {"files", "urls", "search", "vidal10m"}
        if unknown:
            raise ValueError(f"unknown sources {sorted(unknown)}; use files, urls, search, vidal10m")
        return v


def candidate_from_list_row(row: dict[str, Any], base: str, list_uri: str) -> dict[str, Any]:
    """A candidate with its id from one list row; a row without url/path, or a line that could not be
    read (``BAD_ROW``: its id comes from the list and the line), carries ``row_error``."""
    if BAD_ROW in row:
        return {
            "video_id": sha1_id("row", f"{list_uri}|{row[BAD_ROW]}"),
            "source": "files",
            "row_error": row[BAD_ROW],
        }
    out = list_row_fields(row, base)
    if out["path"]:
        return {**out, "url": None, "video_id": video_id_for_path(out["path"]), "source": "files"}
    if out["url"]:
        try:
            return {**out, "video_id": video_id_for_url(out["url"]), "source": "urls"}
        except ValueError as e:
            return {
                **out,
                "video_id": sha1_id("url", out["url"]),
                "source": "urls",
                "row_error": f"malformed URL: {e}",
            }
    return {
        **out,
        "video_id": sha1_id("row", json.dumps(row, sort_keys=True, default=str)),
        "source": "files",
        "row_error": f"list row has neither 'path' nor 'url' ({list_uri})",
    }


class QueryFilter:
    """The queries still to search in this run, decided by the driver, asked by the read tasks."""

    def __init__(self, todo: list[str]):
        self.todo = set(todo)

    def keep(self, queries: list[str]) -> list[str]:
        return [q for q in queries if q in self.todo]

    @staticmethod
    def start(name: str, todo: list[str]) -> Any:
        import ray

        return ray.remote(num_cpus=0)(QueryFilter).options(name=name).remote(todo)

    @staticmethod
    def kept(name: str | None, queries: list[str]) -> list[str]:
        """``queries`` minus those the driver found done; all of them without a filter (unit use)."""
        if not name:
            return queries
        import ray

        try:
            actor = ray.get_actor(name) if ray.is_initialized() else None
        except ValueError:
            actor = None
        return ray.get(actor.keep.remote(queries)) if actor is not None else queries


class DiscoverStage(Stage):
    name = "discover"
    reads = None
    Config = DiscoverConfig
    schema = CANDIDATE_SCHEMA
    config: DiscoverConfig

    # -- driver --------------------------------------------------------------------------------
    def _actor_name(self, purpose: str) -> str:
        return run_scoped_name(self.context.root, self.context.stage_config_hash, purpose)

    def plan_inputs(self) -> list[dict[str, Any]]:
        c = self.config
        items: list[dict[str, Any]] = []
        for uri in c.inputs:
            if not store.exists(uri):
                raise FileNotFoundError(f"discover.inputs: list not found: {uri}")
            items.append({"kind": "list", "spec": json.dumps({"uri": store.normalize(uri)})})
        for uri in c.vidal10m:
            if not store.exists(uri):
                raise FileNotFoundError(f"discover.vidal10m: file not found: {uri}")
            items.append({"kind": "vidal10m", "spec": json.dumps({"uri": store.normalize(uri)})})
        # Every configured query is planned; which of them this root already searched is decided in
        # prepare(), after the runner has applied --force / --retry-failed to the manifest, and the read
        # tasks ask the driver's answer (a named actor) before searching.
        queries = self.configured_queries()
        self._query_filter = self._actor_name(f"discover-queries-{uuid.uuid4().hex[:8]}") if queries else None
        for i in range(0, len(queries), c.terms_per_task):
            spec = {"queries": queries[i : i + c.terms_per_task], "filter": self._query_filter}
            items.append({"kind": "search", "spec": json.dumps(spec)})
        for i, item in enumerate(items):
            item["owner"] = f"{item['kind']}:{i}"
        return items

    def configured_queries(self) -> list[str]:
        """The search queries of the configured terms, without repeats."""
        c = self.config
        terms = [*(read_terms(c.search_terms) if c.search_terms else []), *c.terms]
        return list(dict.fromkeys(search_query(t, c.search_prefix, c.results_per_term) for t in terms))

    def planned_queries(self) -> list[str]:
        """The search queries of this run: configured terms minus those this root already searched."""
        c = self.config
        queries = self.configured_queries()
        self._terms_total, self._terms_skipped = len(queries), 0
        if queries and not c.research_done_terms and manifest.has_output(self.context.root, self.name):
            schema = manifest.read_schema(self.context.root, self.name)
            if schema is not None and "query" in schema.names:
                column = manifest.read_columns(self.context.root, self.name, ["query"])["query"]
                done = set(pc.unique(column).to_pylist())  # unique first: a crawl has ~20 rows per query
                kept = [q for q in queries if q not in done]
                self._terms_skipped = len(queries) - len(kept)
                queries = kept
        return queries

    def prepare(self) -> None:
        c = self.config
        self._actors: list[Any] = []
        if c.dedup:
            self._dedup_actors = RunDedup.start(self._actor_name("discover-dedup"), c.dedup_shards)
            self._actors += self._dedup_actors
        if c.search_rate_limit and (c.search_terms or c.terms):
            self._actors.append(RateLimit.start(self._actor_name("discover-rate"), c.search_rate_limit))
        if getattr(self, "_query_filter", None):
            self._actors.append(QueryFilter.start(self._query_filter, self.planned_queries()))

    def finish(self) -> None:
        import ray

        if getattr(self, "_dedup_actors", None):
            self._dedup_stats = collect_stats(self._dedup_actors)
        for a in getattr(self, "_actors", []):
            ray.kill(a)
        self._actors = []

    def summary(self) -> dict[str, Any]:
        stats = getattr(self, "_dedup_stats", {})
        return {
            "duplicates_dropped": stats.get("duplicates", 0),
            "search_queries": getattr(self, "_terms_total", 0),
            "search_queries_already_done": getattr(self, "_terms_skipped", 0),
        }

    # -- read tasks ----------------------------------------------------------------------------
    def read_inputs(self, item: dict[str, Any]) -> Iterator[pa.Table]:
        spec = json.loads(item["spec"])
        readers = {"list": self._list_rows, "vidal10m": self._vidal_rows, "search": self._search_rows}
        dedup = (
            RunDedup(self._actor_name("discover-dedup"), self.config.dedup_shards)
            if self.config.dedup
            else None
        )
        for n, rows in enumerate(readers[item["kind"]](spec)):
            if dedup is not None and rows:
                keep = dedup.claim([r["video_id"] for r in rows], owner=f"{item['owner']}#{n}")
                rows = [r for r, k in zip(rows, keep) if k]
            if rows:
                yield pa.Table.from_pylist(rows, schema=INPUT_SCHEMA)

    def _list_rows(self, spec: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
        uri = spec["uri"]
        base = os.path.dirname(uri)
        for rows in read_list(uri, self.config.columns):
            yield [candidate_from_list_row(r, base, uri) for r in rows]

    def _vidal_rows(self, spec: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
        yield from read_vidal10m(spec["uri"], READ_BATCH, self.config.vidal10m_limit)

    def _search_rows(self, spec: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
        c = self.config
        params = search_options(
            socket_timeout=c.socket_timeout_s,
            retries=c.extractor_retries,
            cookies_file=c.cookies_file,
            user_agent=c.user_agent,
            extra=c.ytdlp_options,
        )
        rate = RateLimit(c.search_rate_limit, self._actor_name("discover-rate"))
        queries = QueryFilter.kept(spec.get("filter"), spec["queries"])
        with ThreadPoolExecutor(max_workers=c.search_threads) as pool:
            yield from pool.map(lambda q: self.search_one(q, params, rate), queries)

    def search_one(
        self, query: str, params: dict[str, Any], rate: RateLimit | None = None
    ) -> list[dict[str, Any]]:
        """Candidate rows of one search; a failed or empty search becomes one marker row with a reason."""
        from stages.web.ytdlp_fetch import describe_error

        marker = {"video_id": sha1_id("search", query), "query": query, "source": "search"}
        if rate is not None:
            rate.wait(f"search:{self.config.search_prefix}")
        try:
            info = run_search(query, params)
        except Exception as e:  # any yt-dlp failure is this query's row, never the task's crash
            return [{**marker, "row_error": f"search failed: {describe_error(e)}"}]
        rows = search_result_rows(info, query)
        return rows or [{**marker, "row_filter": "search returned no videos"}]

    # -- filters ---------------------------------------------------------------------------------
    def setup(self) -> None:
        c = self.config
        self.stopwords = load_stopwords(c.stopwords) if c.stopwords else frozenset()

    def process(self, batch: pa.Table) -> pa.Table:
        if not hasattr(self, "stopwords"):
            self.setup()
        out = []
        for row in batch.to_pylist():
            result = run_isolated(row["video_id"], lambda r=row: self.process_row(r))
            # A filtered or failed candidate keeps its metadata: the reason is read beside the title,
            # and the query column tells a later run which terms were searched already.
            out.append(result if result["status"] == OK else {**row, **result})
        return self.rows_to_table(out)

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        if row.get("row_error"):
            raise RowError(row["row_error"])
        if row.get("row_filter"):
            raise RowFiltered(row["row_filter"])
        c = self.config
        if row.get("url") and (problem := url_problem(row["url"], allow_file_urls=True)):
            raise RowError(problem)  # file:// is the download stage's call (download.allow_file_urls)
        if not row.get("language"):
            row["language"] = guess_language(
                " ".join(filter(None, [row.get("title"), row.get("description")]))
            )
        duration = row.get("duration")
        if duration is not None and c.max_duration is not None and duration > c.max_duration:
            raise RowFiltered(f"duration {duration:g} s over the cap of {c.max_duration:g} s")
        if row.get("source") in c.filter_sources:
            self.text_rules(row)
        return row

    def text_rules(self, row: dict[str, Any]) -> None:
        """Unknown duration, title words / hashtags, stop words, language; RowFiltered with the rule."""
        c = self.config
        if row.get("duration") is None and not c.allow_unknown_duration:
            raise RowFiltered("duration unknown (discover.allow_unknown_duration is false)")
        tags = clean_tags(row.get("hashtags") or [], self.stopwords)
        row["hashtags"] = tags
        words = title_words(row.get("title"), self.stopwords)
        if len(words) < c.min_title_words and not tags:
            raise RowFiltered(
                f"title has {len(words)} meaningful word(s) (< {c.min_title_words}) and no hashtags "
                f"beyond stop words"
            )
        if c.languages:
            lang = row.get("language")
            if lang is None and not c.allow_unknown_language:
                raise RowFiltered(f"language unknown (keeping only {', '.join(c.languages)})")
            if lang is not None and lang not in c.languages:
                raise RowFiltered(f"language {lang} not in {', '.join(c.languages)}")
