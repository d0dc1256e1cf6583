"""Peak memory of one shard writer uploading a 200 MB tar to a real S3 server (moto on 127.0.0.1).

Each measurement is a fresh child process that builds samples on the fly (1 MiB of random bytes
each, so the samples themselves never add up) and writes them as one tar with ``write_tar``; it
reports its peak RSS (VmHWM) above what it held just before the write. Three ways of writing:

- ``vidal``: ``store.open_atomic`` as shipped (temp key, foreground multipart parts, server-side copy);
- ``background``: the same stream with pyarrow's default ``background_writes=True``;
- ``buffered``: the whole tar in memory, then one upload (what ``open_atomic`` did before issue 13).

    python bench/bench_s3_write.py --mb 200 --repeat 3

Prints a Markdown table (medians of the repeats) with the load average beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHILD = r"""
import io, json, os, sys, time
import pyarrow.fs as pafs
from contracts import store
from stages.shard import write_tar

mode, uri, mb = sys.argv[1], sys.argv[2], int(sys.argv[3])

def hwm_mb():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024

def samples():
    for i in range(mb):
        yield f"sample{i:05d}", {"bin": os.urandom(1 << 20), "json": b"{}"}

store.resolve(uri)  # build the filesystem before the baseline
if mode == "background":
    fs, path = store.resolve(uri)
    s = store.settings()
    scheme, host = s.transport()
    fs = pafs.S3FileSystem(endpoint_override=host, scheme=scheme, region=s.region)  # background_writes=True
    store.resolve = lambda u, fs=fs: (fs, u.split("://", 1)[1])
elif mode == "buffered":
    import contextlib

    @contextlib.contextmanager
    def open_buffered(u):
        buf = io.BytesIO()
        yield buf
        fs, path = store.resolve(u)
        with fs.open_output_stream(path) as f:
            f.write(buf.getbuffer())

    import stages.shard as shard
    shard.store = type("S", (), {"open_atomic": staticmethod(open_buffered)})
before = hwm_mb()
t0 = time.perf_counter()
write_tar(uri, samples())
wall = time.perf_counter() - t0
print(json.dumps({"peak_over_baseline_mb": hwm_mb() - before, "baseline_mb": before, "wall_s": wall}))
"""


def measure(mode: str, uri: str, mb: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, uri, str(mb)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{mode}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    from contracts import store
    from tests.s3server import S3Server

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mb", type=int, default=200, help="tar size in MiB")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--modes", default="vidal,background,buffered")
    args = p.parse_args()
    server = S3Server().start()
    try:
        store.configure(server.storage())  # children inherit it through $VIDAL_STORAGE
        bucket = server.make_bucket("bench")
        load = os.getloadavg()
        rows = []
        for mode in args.modes.split(","):
            runs = [measure(mode, store.join(bucket, f"{mode}-{i}.tar"), args.mb) for i in range(args.repeat)]
            peak = statistics.median(r["peak_over_baseline_mb"] for r in runs)
            wall = statistics.median(r["wall_s"] for r in runs)
            rows.append(
                f"| {mode} | {args.mb} | {peak:.0f} | {min(r['peak_over_baseline_mb'] for r in runs):.0f}-"
                f"{max(r['peak_over_baseline_mb'] for r in runs):.0f} | {args.mb / wall:.0f} |"
            )
            server.client().delete_objects(
                Bucket="bench", Delete={"Objects": [{"Key": f"{mode}-{i}.tar"} for i in range(args.repeat)]}
            )
        end_load = os.getloadavg()
    finally:
        server.stop()
    print(
        f"load average {load[0]:.1f} at the start, {end_load[0]:.1f} at the end; {time.strftime('%H:%M UTC', time.gmtime())}"
    )
    print("| writer | tar MiB | peak RSS over baseline, MiB (median) | range | MiB/s |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
