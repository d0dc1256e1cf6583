"""How the run report scales: wall time and peak memory of ``write_report`` for runs of growing size.

Writes synthetic runs (discover, probe with frame and audio bytes, caption, asr, depth, shards) of
each size under ``bench/out/report_scale/``, then runs the report on each in a fresh process and
records its peak resident memory. A report that streamed nothing would grow with the run; this
one should stay flat apart from the counters' capped distinct values.

    .venv/bin/python bench/report_scale.py [--rows 1000 10000 100000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from contracts import manifest, store  # noqa: E402
from contracts import shard_format as fmt  # noqa: E402
from stages.base import BASE_FIELDS  # noqa: E402
from stages.shard import write_tar  # noqa: E402

PART_ROWS = 2000
SAMPLES_PER_SHARD = 1000


def _png16(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(300, 9000, (12, 16)).astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def build(root: Path, rows: int) -> None:
    """A run of ``rows`` videos whose heavy columns (frames, audio, depth) the report must not read whole."""
    rng = np.random.default_rng(rows)
    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(jpeg, format="JPEG")
    frame = jpeg.getvalue()
    depth = [_png16(rng) for _ in range(8)]
    for start in range(0, rows, PART_ROWS):
        ids = [f"v{i:08d}" for i in range(start, min(rows, start + PART_ROWS))]
        n = len(ids)
        status = rng.choice(["ok", "ok", "ok", "failed", "filtered"], n).tolist()
        base = {
            "video_id": ids,
            "status": status,
            "error": [
                None if s == "ok" else f"{s} because of {rng.integers(1000)} at /x/{i}"
                for s, i in zip(status, ids)
            ],
        }
        tables = {
            "discover": {
                **base,
                "title": [f"title {i} words here" for i in ids],
                "query": rng.choice(["a", "b", "c"], n).tolist(),
                "hashtags": [[f"unique{i}", "common"] for i in ids],
            },  # one distinct tag per row: the cap at work
            "probe": {
                **base,
                "duration": rng.uniform(0.5, 20, n).tolist(),
                "fps": rng.choice([25.0, 30.0], n).tolist(),
                "width": rng.choice([640, 1280], n).tolist(),
                "height": rng.choice([360, 720], n).tolist(),
                "has_audio": (rng.random(n) > 0.3).tolist(),
                "frames": [[frame + bytes(rng.integers(0, 255, 2000, dtype=np.uint8))] * 8 for _ in ids],
                "audio": [bytes(rng.integers(0, 255, 8000, dtype=np.uint8)) for _ in ids],
            },
            "caption": {
                **base,
                "mplug": [f"a caption of {i} with some words" for i in ids],
                "ofa": [[f"frame caption {j}" for j in range(8)] for _ in ids],
                "caption_model": ["tiny"] * n,
            },
            "asr": {
                **base,
                "asr": [f"speech {i}" for i in ids],
                "asr_language": rng.choice(["en", "zh"], n).tolist(),
            },
            "depth": {
                **base,
                "depth": [depth] * n,
                "depth_kind": ["metric"] * n,
                "depth_model": ["tiny"] * n,
            },
        }
        for stage, cols in tables.items():
            schema = pa.schema(BASE_FIELDS).names
            t = pa.table({k: cols[k] for k in [*schema, *[c for c in cols if c not in schema]]})
            store.write_parquet(manifest.new_part_uri(str(root), stage), t)
    for s in range(0, rows, SAMPLES_PER_SHARD):
        keys = [f"v{i:08d}" for i in range(s, min(rows, s + SAMPLES_PER_SHARD))]
        write_tar(
            str(root / "shard" / f"{fmt.shard_name(s // SAMPLES_PER_SHARD)}.tar"),
            [
                (k, {fmt.frame_key("rgb", 0): frame, fmt.JSON_KEY: json.dumps({"title": k}).encode()})
                for k in keys
            ],
        )


def measure(root: Path, out: Path) -> dict:
    """Run the report in a fresh process; its wall time and peak RSS.

    Peak RSS is the child's own ``VmHWM``: ``ru_maxrss`` would also count the parent's memory,
    which Linux carries over to a vforked child across exec.
    """
    code = (
        "import re, time; t = time.time(); from pipeline.report import write_report; "
        f"write_report({str(root)!r}, {str(out)!r}, samples=12, seed=0); "
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
        "print(time.time() - t, hwm)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    wall, rss_kb = done.stdout.split()
    return {"wall_s": round(float(wall), 2), "peak_rss_mb": round(int(rss_kb) / 1024, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1000, 10_000, 100_000])
    p.add_argument("--dir", default=str(REPO / "bench" / "out" / "report_scale"))
    args = p.parse_args()
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print("| rows | run size on disk | report wall s | rows/s | peak RSS MB |")
    print("|---:|---:|---:|---:|---:|")
    for rows in args.rows:
        root = Path(args.dir) / f"run-{rows}"
        if not (root / "shard").exists():
            build(root, rows)
        size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and "report" not in f.parts)
        m = measure(root, Path(args.dir) / f"report-{rows}")
        print(
            f"| {rows:,} | {size / 2**20:,.0f} MB | {m['wall_s']} | {rows / m['wall_s']:,.0f} | {m['peak_rss_mb']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
