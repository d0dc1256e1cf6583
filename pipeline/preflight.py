"""Checks of what a user typed, made before Ray starts and before anything is written.

A wrong ``--stage``, an ``--input`` that is a directory, an empty list (or one without a ``url`` or
``path`` column), a root that is a file or cannot be written, a bucket that does not exist: each is
the user's to fix, so the run stops at once with exit status 2 and one line naming the problem,
instead of a traceback from a worker minutes later (or, worse, after demo media or manifests were
written). The checks are cheap: file metadata, the first MiB of a list, a Parquet footer, one temp
file in the root's nearest existing directory (removed at once).
"""

from __future__ import annotations

import csv
import os
import tempfile
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from contracts import store
from stages import available_stages
from stages.sources.lists import LIST_FORMATS, list_format

HEAD_BYTES = 1 << 20  # enough of a list to tell "header only" from "has rows"


class UserError(Exception):
    """A problem in the command line, the config or the root: exit 2 with this one-line message."""


def check_stage_names(stage: str | None, until: str | None) -> None:
    """``--stage`` / ``--until`` must name a stage this installation has."""
    known = available_stages()
    for flag, name in (("--stage", stage), ("--until", until)):
        if name is not None and name not in known:
            raise UserError(f"{flag} {name!r}: unknown stage; available: {', '.join(known)}")


def check_root(root: str) -> None:
    """The root is a directory we can write (or can be created), or a bucket that exists."""
    if store.is_remote(root):
        _check_bucket(root)
        return
    path = store.normalize(root)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"run root {path} is a file, not a directory; give a directory with --root")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"run root {path} cannot be created: {existing} is a file")
    try:  # os.access says yes to root on a read-only mount: a real temp file is the only answer
        fd, probe = tempfile.mkstemp(prefix=store.TMP_PREFIX, dir=existing)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UserError(
            f"run root {path} is not writable ({e.strerror} in {existing}); "
            f"fix its permissions or choose another --root"
        ) from None


def _check_bucket(root: str) -> None:
    fs, path = store.resolve(root)
    bucket = path.split("/", 1)[0]
    scheme = root.split("://", 1)[0]
    try:
        info = fs.get_file_info(bucket)
    except OSError as e:
        raise UserError(
            f"run root {root}: cannot reach the bucket {scheme}://{bucket} ({' '.join(str(e).split())[:200]})"
        ) from None
    if info.type == pafs.FileType.NotFound:
        raise UserError(
            f"run root {root}: the bucket {scheme}://{bucket} does not exist; create it or fix --root"
        )


def check_list(uri: str, label: str, columns: dict[str, str] | None = None) -> None:
    """A list exists, is a file of a known format, holds at least one row (beyond a header) and, for
    CSV / TSV / Parquet, has a ``url`` or ``path`` column (``columns`` maps ours to the list's)."""
    fs, path = store.resolve(uri)
    try:
        info = fs.get_file_info(path)
    except OSError as e:
        raise UserError(f"{label} {uri}: cannot be read ({' '.join(str(e).split())[:200]})") from None
    if info.type == pafs.FileType.NotFound:
        raise UserError(f"{label} {uri}: no such file")
    if info.type == pafs.FileType.Directory:
        raise UserError(f"{label} {uri} is a directory; give a list file ({', '.join(LIST_FORMATS)})")
    kind = list_format(path)
    if kind is None:
        raise UserError(f"{label} {uri}: unknown list format; use one of {', '.join(LIST_FORMATS)}")
    if info.size == 0:
        raise UserError(f"{label} {uri} is empty (0 bytes)")
    if kind == "parquet":
        try:
            rows = pq.ParquetFile(fs.open_input_file(path)).metadata.num_rows
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a damaged footer
            raise UserError(f"{label} {uri}: not a readable Parquet file ({type(e).__name__})") from None
        if rows == 0:
            raise UserError(f"{label} {uri} has no rows")
        _check_columns(pq.read_schema(fs.open_input_file(path)).names, uri, label, columns)
        return
    with fs.open_input_stream(path) as f:
        head = f.read(HEAD_BYTES)
    lines = [line for line in head.splitlines() if line.strip()]
    need = 1 if kind == "jsonl" else 2  # a CSV's first line is its header
    if len(lines) < need and len(head) < HEAD_BYTES:
        raise UserError(
            f"{label} {uri} has no rows" + (" (only a header line)" if lines else " (only blank lines)")
        )
    if kind in ("csv", "tsv"):
        header = lines[0].decode("utf-8-sig", "replace")
        names = next(csv.reader([header], delimiter="\t" if kind == "tsv" else ","), [])
        _check_columns([n.strip() for n in names], uri, label, columns)


def _check_columns(names: list[str], uri: str, label: str, columns: dict[str, str] | None) -> None:
    wanted = {(columns or {}).get(c, c) for c in ("url", "path")}
    if not wanted & set(names):
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise UserError(
            f"{label} {uri} has neither a 'url' nor a 'path' column (its columns: {shown}); "
            f"name yours with --set discover.columns.url=<column>"
        )


def check_vidal10m(uri: str) -> None:
    """A VIDAL-10M file exists and opens a JSON object (``.gz`` / ``.bz2`` / ``.zst`` read through)."""
    fs, path = store.resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise UserError(f"discover.vidal10m: {uri}: no such file")
    try:
        with fs.open_input_stream(path, compression="detect") as f:
            head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError as e:
        raise UserError(
            f"discover.vidal10m: {uri}: cannot be read ({' '.join(str(e).split())[:200]})"
        ) from None
    if not head.startswith(b"{"):
        raise UserError(
            f"discover.vidal10m: {uri} is not a VIDAL-10M JSON object (it does not start with '{{')"
        )


def check_inputs(discover: Any, from_cli: bool) -> None:
    """Every configured input of the discover stage can be read."""
    label = "--input" if from_cli else "discover.inputs:"
    for uri in discover.inputs:
        check_list(uri, label, discover.columns)
    for uri in discover.vidal10m:
        check_vidal10m(uri)
    if discover.search_terms:
        from stages.sources.text_rules import resolve_manifest_path

        terms = discover.search_terms
        found = store.exists(terms) if store.is_remote(terms) else resolve_manifest_path(terms).is_file()
        if not found:
            raise UserError(f"discover.search_terms: {terms}: no such file")


def check_clip_durations(config: Any, stages: list[str]) -> None:
    """With ``clip`` in ``run.stages``, probe must let through the long videos clip is meant to split:
    ``probe.max_duration`` null, or above ``clip.max_duration`` and at least the caps of discover and
    download (null there: no cap, so probe's must be null too). Checked when probe or clip runs."""
    if "clip" not in config.run.stages or not {"probe", "clip"} & set(stages):
        return
    probe_max, clip_max = config.probe.max_duration, config.clip.max_duration
    if probe_max is None:
        return
    if probe_max <= clip_max:
        raise UserError(
            f"probe.max_duration={probe_max:g} is not above clip.max_duration={clip_max:g}: probe would "
            f"filter every video the clip stage splits; set probe.max_duration to null (or the longest "
            f"video worth splitting)"
        )
    caps = {
        "discover.max_duration": config.discover.max_duration,
        "download.max_duration": config.download.max_duration,
    }
    limit = min((c for c in caps.values() if c is not None), default=None)
    if limit is None or probe_max < limit:
        shown = ", ".join(f"{k}={'null' if v is None else f'{v:g}'}" for k, v in caps.items())
        raise UserError(
            f"probe.max_duration={probe_max:g} is below what {shown} let through: probe would filter "
            f"long videos the clip stage is meant to split; set probe.max_duration to "
            f"{'null' if limit is None else f'{limit:g} or null'}, or lower those caps to match"
        )
