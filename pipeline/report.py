"""A run as a page people can look at: ``python -m pipeline.report --root RUN [--out DIR]``.

Writes ``index.html`` with its plots and sample media beside it (no server, no external resource):
the funnel of every stage present, statistics as plots with their numbers, and random samples from
the shards with all their modalities and texts. Statistics stream the manifests' needed columns;
samples come from a few randomly chosen shards, reading only the members of the chosen samples,
so the cost of a report does not grow with the run (see ``pipeline.report_stats``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python pipeline/report.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from contracts import shard_format as fmt
from contracts import store  # noqa: E402
from contracts.config_io import ConfigError  # noqa: E402
from contracts.encodings import decode_depth_png, decode_flac, decode_image  # noqa: E402
from pipeline.config import load_config
from pipeline.report_curation import score_plot  # noqa: E402
from pipeline.report_html import SampleView, curation_key, render_page  # noqa: E402
from pipeline.report_plots import colourize_depth, depth_scale_strip, plot_funnel, plot_stat, png_bytes  # noqa: E402
from pipeline.report_stats import RunStats, collect  # noqa: E402

MARKER = ".vidal-report"  # marks a directory this tool wrote, so a rerun may replace it
OWNED = ("index.html", "plots", "samples")
KEY_SUFFIX = "__key__"


class ReportError(RuntimeError):
    """The report cannot be written (nothing at the root, an output directory that is not ours)."""


# -- samples ---------------------------------------------------------------------------------------
def shard_tars(root: str) -> list[str]:
    """The shard tars of a run (``{root}/shard/*.tar``, not the temp files of unfinished writes), sorted."""
    names = store.list_files(store.join(root, "shard"), suffix=".tar")
    return [u for u in names if not u.rsplit("/", 1)[1].startswith(".")]


def reservoir_from_tar(uri: str, k: int, rng: random.Random) -> list[dict[str, bytes]]:
    """Up to ``k`` uniformly random samples of one tar, reading only the chosen samples' members.

    A first walk reads the 512-byte headers only (tarfile seeks over member data) and keeps, by
    reservoir sampling over keys, where the members of ``k`` samples lie; then just those are read.
    """
    reservoir: list[tuple[str, list[tuple[str, int, int]]]] = []
    seen, current, current_key = 0, None, None
    with store.open_input(uri) as f:
        with tarfile.open(fileobj=f, mode="r:") as tar:
            while (member := tar.next()) is not None:
                tar.members.clear()  # tarfile keeps every header it reads; this walk needs none of them
                if not member.isfile() or "." not in member.name:
                    continue
                key, suffix = member.name.split(".", 1)
                if key != current_key:
                    current_key, seen = key, seen + 1
                    slot = seen - 1 if seen <= k else rng.randrange(seen)
                    current = None
                    if slot < k:
                        current = (key, [])
                        reservoir[slot : slot + 1] = [current]
                if current is not None:
                    current[1].append((suffix, member.offset_data, member.size))
        samples = []
        for key, members in reservoir:
            sample: dict[str, Any] = {KEY_SUFFIX: key}
            for suffix, offset, size in members:
                f.seek(offset)
                sample[suffix] = f.read(size)
            samples.append(sample)
    return samples


def sample_shards(
    root: str, n: int, seed: int, tars: list[str] | None = None
) -> tuple[list[dict[str, bytes]], list[str]]:
    """``n`` random samples from randomly chosen shards (about ``n`` of them), and the tars that were read."""
    tars = list(shard_tars(root) if tars is None else tars)
    rng = random.Random(seed)
    rng.shuffle(tars)
    if n <= 0 or not tars:
        return [], []
    per_shard = math.ceil(n / min(n, len(tars)))
    samples, read = [], []
    for uri in tars:
        if len(samples) >= n:
            break
        got = reservoir_from_tar(uri, min(per_shard, n - len(samples)), rng)
        read.append(uri)
        samples += [{**s, "__shard__": uri.rsplit("/", 1)[1]} for s in got]
    return samples, read


def _decodes(data: bytes) -> bool:
    try:
        decode_image(data, mode=None)
        return True
    except ValueError:  # any undecodable image is shown as a problem line, not a broken <img>
        return False


def _audio_seconds(data: bytes) -> float | None:
    try:
        pcm, rate = decode_flac(data)
    except Exception:  # an undecodable FLAC gets no player
        return None
    return len(pcm) / rate if rate and len(pcm) else None


def render_sample(index: int, raw: dict[str, Any], out: Path) -> SampleView:
    """Write one sample's media as files under ``samples/NNN/`` (never named after web data)."""
    rel = Path("samples") / f"{index:03d}"
    (out / rel).mkdir(parents=True, exist_ok=True)
    try:
        meta = json.loads(raw.get(fmt.JSON_KEY) or b"{}")
        meta = meta if isinstance(meta, dict) else {}
    except ValueError:
        meta = {}
    view = SampleView(index, raw[KEY_SUFFIX], raw.get("__shard__", ""), meta)
    if not meta:
        view.problems.append("the sample's json is missing or not valid JSON")
    for modality, paths in (("rgb", view.rgb), ("ir", view.ir)):
        for i, data in enumerate(fmt.frames_of(raw, modality)):
            if _decodes(data):
                (out / rel / f"{modality}{i}.jpg").write_bytes(data)
                paths.append((rel / f"{modality}{i}.jpg").as_posix())
            else:
                view.problems.append(f"{modality} frame {i} could not be decoded")
    depth = []
    for i, data in enumerate(fmt.frames_of(raw, "depth")):
        try:
            depth.append(decode_depth_png(data).astype(np.int64))
        except ValueError:  # shown as a problem line
            view.problems.append(f"depth frame {i} could not be decoded")
    valid = np.concatenate([d[d > 0].ravel() for d in depth]) if depth else np.zeros(0)
    if len(valid):
        view.depth_range = (float(valid.min()) / 1000.0, float(valid.max()) / 1000.0)
    for i, mm in enumerate(depth):
        (out / rel / f"depth{i}.png").write_bytes(
            png_bytes(colourize_depth(mm, *(view.depth_range or (0.0, 1.0))))
        )
        view.depth.append((rel / f"depth{i}.png").as_posix())
    if raw.get(fmt.AUDIO_KEY):
        view.audio_seconds = _audio_seconds(raw[fmt.AUDIO_KEY])
        if view.audio_seconds is None:
            view.problems.append("audio could not be decoded")
        else:
            (out / rel / "audio.flac").write_bytes(raw[fmt.AUDIO_KEY])
            view.audio = (rel / "audio.flac").as_posix()
    return view


# -- the report ------------------------------------------------------------------------------------
def default_out(root: str) -> Path:
    """``{root}/report`` for a local run root; a remote root needs ``--out``."""
    if store.is_remote(root):
        raise ReportError(f"the run root {root} is remote: give --out, a local directory for the report")
    return Path(store.normalize(root)) / "report"


def prepare_out(out: Path) -> None:
    """Empty what a previous report wrote in ``out``; refuse a non-empty directory we did not write."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ReportError(f"{out} is not empty and holds no earlier report: choose another --out")
    for name in OWNED:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    (out / "plots").mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(
        "written by python -m pipeline.report; rerunning it replaces this directory's report\n"
    )


def write_plots(stats: RunStats, out: Path) -> dict[str, str]:
    """One PNG per statistic with a plot, plus the funnel; returns key -> path relative to ``out``."""
    plots = {}
    if stats.funnel:
        plot_funnel(
            [f.stage for f in stats.funnel], [f.counts for f in stats.funnel], out / "plots" / "funnel.png"
        )
        plots["funnel"] = "plots/funnel.png"
    for st in stats.stats:
        if st.plot and (st.plot.get("values") or st.plot.get("series")):
            plot_stat(st.plot, out / "plots" / f"{st.key}.png")
            plots[st.key] = f"plots/{st.key}.png"
    for h in stats.curation.scores if stats.curation else []:
        if h.kept.n + h.filtered.n:
            key = curation_key(h.stage, h.column)
            plot_stat(score_plot(h), out / "plots" / f"{key}.png")
            plots[key] = f"plots/{key}.png"
    return plots


def write_thumbs(stats: RunStats, out: Path) -> dict[str, str]:
    """The first frame of each curation example (as stored: JPEG) under ``samples/curation``."""
    thumbs: dict[str, str] = {}
    examples = [e for r in stats.curation.rules for e in r.examples] if stats.curation else []
    for i, e in enumerate(x for x in examples if x.frame):
        rel = Path("samples") / "curation" / f"{i:03d}.jpg"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(e.frame)
        thumbs[e.video_id] = rel.as_posix()
    return thumbs


def write_report(
    root: str | Path, out_dir: str | Path | None = None, samples: int = 12, seed: int = 0
) -> Path:
    """Write the report of the run at ``root`` into ``out_dir`` (default ``{root}/report``); returns index.html."""
    root = store.normalize(str(root))
    if not store.exists(root):
        raise ReportError(f"no run at {root}")
    out = Path(out_dir) if out_dir is not None else default_out(root)
    stats = collect(root, seed=seed)
    if not stats.funnel:
        raise ReportError(
            f"{root} has no stage output yet (no {{stage}}/part-*.parquet): run the pipeline first"
        )
    prepare_out(out)
    plots = write_plots(stats, out)
    thumbs = write_thumbs(stats, out)
    tars = shard_tars(root)
    raw, read = sample_shards(root, samples, seed, tars)
    views = [render_sample(i, s, out) for i, s in enumerate(raw)]
    scale = None
    if any(v.depth for v in views):
        scale = depth_scale_strip(out / "plots" / "depth_scale.png").relative_to(out).as_posix()
    if not tars:
        note = "No shards yet: the shard stage has not run, so there are no samples to show."
    else:
        note = (
            f"{len(views)} random samples (seed {seed}) from {len(read)} of {len(tars)} shards; "
            "each sample as the trainer reads it. Depth is colour-mapped per sample, near to far."
        )
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    index = out / "index.html"
    index.write_text(render_page(stats, plots, views, scale, note, generated, thumbs), encoding="utf-8")
    return index


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.report",
        description="Write a self-contained HTML report of a run: the funnel of each stage, statistics "
        "as plots and tables, and random samples from the shards. Opens from disk, no server.",
    )
    p.add_argument("--root", required=True, help="run root: a local directory or s3:// / gs:// URI")
    p.add_argument(
        "--out",
        help="directory for index.html and its files (default: ROOT/report; required for a remote root)",
    )
    p.add_argument("--samples", type=int, default=12, help="random samples to show (default 12)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choices (default 0)")
    p.add_argument(
        "--config",
        help="a pipeline config whose run.storage (endpoint, region, ...) reaches a "
        "remote root (default: $VIDAL_STORAGE, else the provider's defaults)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.samples < 0:
        print("error: --samples must be >= 0", file=sys.stderr)
        return 2
    if store.is_remote(args.root) and not args.out:  # before anything reads the run
        print(
            f"error: the run root {args.root} is remote: give --out, a local directory for the report",
            file=sys.stderr,
        )
        return 2
    try:
        if args.config:
            store.configure(load_config(args.config).run.storage)
        index = write_report(args.root, args.out, args.samples, args.seed)
    except (ReportError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {index.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
