"""Which shards the trainer reads and how many samples each holds, wherever the shards are.

A shard spec is a path, a directory or prefix (its ``*.tar``), a glob, a brace pattern
(``s3://bucket/run/shard/{00000..00009}.tar``), a ``::``-joined or YAML list, or URLs; local
paths and object stores (``s3://``, ``gs://``, reached through ``contracts.store`` and its
``run.storage`` settings) behave the same. ``http(s)://`` and ``pipe:`` URLs are taken as given.

The Parquet index the shard stage writes beside each tar (``NAME.parquet``) gives the sample count
of each shard, read from where the tars are. The counts set the epoch length (every rank yields the
same number of batches) and balance the split of shards over ranks x loader workers by samples, not
by shard count: a reader dealt the small last shards would otherwise run dry and start its shards
over while the others are still on their first pass.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any, Literal

import braceexpand
import pyarrow.parquet as pq

from contracts import store

INDEX_FLAG = {"audio": "has_audio", "depth": "has_depth", "infrared": "has_ir"}
INDEX_READERS = 16  # index files read at once (one small GET each on an object store)
Split = Literal["train", "holdout", "all"]


def _passes_through(url: str) -> bool:
    return url.startswith(("http://", "https://", "pipe:"))


def _visible(uri: str) -> bool:
    return not uri.rsplit("/", 1)[-1].startswith(".")  # temp files of unfinished writers


def _remote_shards(item: str) -> list[str]:
    parent, name = item.rstrip("/").rsplit("/", 1)
    if glob.has_magic(name):
        return [
            u for u in store.list_files(parent) if fnmatch.fnmatch(u.rsplit("/", 1)[1], name) and _visible(u)
        ]
    if item.endswith(".tar"):
        return [item]  # named explicitly: checked when opened, not with one request per shard here
    found = store.kind(item)
    if found == "file":
        return [item]
    if found == "dir":
        return [u for u in store.list_files(item, suffix=".tar") if _visible(u)]
    return [u for u in store.list_files(parent, prefix=name, suffix=".tar") if _visible(u)]  # a name prefix


def _local_shards(item: str) -> list[str]:
    if os.path.isdir(item):
        return sorted(glob.glob(os.path.join(item, "*.tar")))
    if glob.has_magic(item):
        return sorted(glob.glob(item))
    if os.path.exists(item):
        return [item]
    return [] if item.endswith(".tar") else sorted(glob.glob(glob.escape(item) + "*.tar"))


def expand_shards(spec: str | list[str]) -> list[str]:
    """Shard URLs of a path, directory, prefix, glob, brace pattern, ``::`` list or URL list."""
    parts = spec if isinstance(spec, list) else str(spec).split("::")
    urls: list[str] = []
    for part in parts:
        for item in braceexpand.braceexpand(str(part).strip()):
            if item.startswith("file://"):
                item = item[len("file://") :]
            if _passes_through(item):
                found = [item]
            else:
                found = _remote_shards(item) if store.is_remote(item) else _local_shards(item)
            if not found:
                raise FileNotFoundError(
                    f"shard {item!r} does not exist (from {spec!r}); give a tar, a "
                    f"directory or prefix of tars, a glob or a brace pattern"
                )
            urls += found
    if not urls:
        raise FileNotFoundError(f"no shards match {spec!r}")
    return urls


def open_shard(url: str) -> Any:
    """A binary stream of one tar: local path, ``file://``, ``http(s)://``, object stores, ``pipe:``."""
    if url.startswith("file://"):
        url = url[len("file://") :]
    if url.startswith(("http://", "https://")):
        import requests

        response = requests.get(url, stream=True, timeout=60)
        response.raise_for_status()
        response.raw.decode_content = True
        return response.raw
    if url.startswith("pipe:"):
        from webdataset.gopen import gopen

        return gopen(url)
    if not store.is_remote(url):
        return open(url, "rb")
    return store.open_input_stream(url)


# -- the held-out split -----------------------------------------------------------------------
def in_holdout(key: str, fraction: float, seed: int = 0) -> bool:
    """True for the ~``fraction`` of video ids held out for evaluation (a stable hash of the id)."""
    if fraction <= 0:
        return False
    digest = hashlib.sha1(f"{seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def keep_key(key: str, split: Split, fraction: float, seed: int) -> bool:
    """Whether ``key`` belongs to ``split`` (``all`` keeps everything)."""
    if split == "all" or fraction <= 0:
        return split != "holdout"
    return in_holdout(key, fraction, seed) == (split == "holdout")


# -- sample counts from the indexes -----------------------------------------------------------
def index_of(url: str) -> str | None:
    """The Parquet index beside a tar, or None for URLs whose index is not read (http, pipe)."""
    return url[: -len(".tar")] + ".parquet" if url.endswith(".tar") and not _passes_through(url) else None


def _count_one(url: str, modalities: tuple[str, ...], split: Split, fraction: float, seed: int) -> int:
    index = index_of(url)
    flags = [INDEX_FLAG[m] for m in modalities if m != "video"]
    try:
        fs, path = store.resolve(index)
        table = pq.read_table(
            path, filesystem=fs, columns=["key", *flags] if "video" not in modalities else ["key"]
        )
    except FileNotFoundError:
        raise FileNotFoundError(
            f"shard {url} has no Parquet index beside it ({index}); the shard stage writes "
            "one per tar. Set data.epoch_samples to train on shards without one"
        ) from None
    keys = table["key"].to_pylist()
    present = (
        [True] * len(keys)
        if "video" in modalities
        else [any(v) for v in zip(*(table[f].to_pylist() for f in flags))]
    )
    return sum(p and keep_key(k, split, fraction, seed) for k, p in zip(keys, present))


@lru_cache(maxsize=8)
def _counts(
    urls: tuple[str, ...], modalities: tuple[str, ...], split: Split, fraction: float, seed: int
) -> tuple[int, ...] | None:
    if any(index_of(u) is None for u in urls):
        return None
    with ThreadPoolExecutor(min(INDEX_READERS, len(urls))) as pool:
        return tuple(pool.map(lambda u: _count_one(u, modalities, split, fraction, seed), urls))


def shard_counts(
    urls: list[str], modalities: list[str], split: Split, fraction: float, seed: int
) -> dict[str, int] | None:
    """Samples of ``split`` with any of ``modalities`` in each shard, from the Parquet indexes;
    None for http(s) and pipe URLs; ``FileNotFoundError`` naming a tar whose index is missing."""
    counts = _counts(tuple(urls), tuple(modalities), split, fraction, seed) if urls else ()
    return None if counts is None else dict(zip(urls, counts))


def count_samples(
    urls: list[str], modalities: list[str], split: Split, fraction: float, seed: int
) -> int | None:
    """Total of ``shard_counts`` (None where the shards' indexes are not read)."""
    counts = shard_counts(urls, modalities, split, fraction, seed)
    return None if counts is None else sum(counts.values())


def assign_shards(urls: list[str], counts: dict[str, int], readers: int) -> list[list[str]]:
    """Shards dealt in order to the reader with the fewest samples so far (then the fewest shards);
    equal shards fall round-robin, as an unweighted split would deal them."""
    loads = [(0, 0, r) for r in range(readers)]
    out: list[list[str]] = [[] for _ in range(readers)]
    for url in urls:
        load, n, r = min(loads)
        out[r].append(url)
        loads[r] = (load + counts.get(url, 0), n + 1, r)
    return out
