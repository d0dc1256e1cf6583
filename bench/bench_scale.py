"""The control plane at scale (issue 19): what a stage costs on the driver before, around and after its data
plane, at 1M and 3M synthetic manifest rows, projected linearly to VIDAL-10M's 10,076,613.

    python bench/bench_scale.py resume  [--sizes 1000000 3000000]   # done-id structure, old set vs DoneIds
    python bench/bench_scale.py control [--sizes ...] [--backend local s3] [--unreported]   # stage start/end phases
    python bench/bench_scale.py workers [--sizes 1000000]            # the runner's plan on Ray: largest worker
    python bench/bench_scale.py discover [--entries 1000000] [--stage]   # VIDAL-10M JSON reader (and stage), rows/s
    python bench/bench_scale.py dedup   [--sizes 1000000 3000000]    # discover's dedup index, MiB per million

``control`` writes a manifest of N rows in the runner's parts (``run.rows_per_part`` 256; tiny columns:
video_id, status, error, duration) on local disk or on the S3-compatible test server (moto, 127.0.0.1)
through the runner's part writer, and times on the driver what a stage start does over it: listing, every
part's footer (the start-up check), the done ids read and ``DoneIds`` built, the upstream ok ids read (what
the join plans from), the pending set; then the stage's first end (``contracts.stage_end.end_stage``:
duplicate check from the writers' reported hashes, compaction to ``run.compact_target_mb`` 128 with the
merges in eight processes standing in for the runner's Ray tasks, ``_parts.json``); then the same start over
the compacted manifest and the end of a resumed stage that wrote 1,024 rows (the older parts' ids read for
the check) and the ``_SUCCESS`` totals. ``--unreported`` adds the first end of a killed driver's rerun (no
report: every part read once before its merge) on a second copy. Each step runs in its own process, so the
driver's peak RSS (``ru_maxrss``) is that step's alone. ``resume``: old = RSS growth of
unpickling a list and building a frozenset (what each worker held); new = the ``DoneIds`` arrays' bytes
(the node's one shared copy) and the pickled bytes that travel out of band (zero-copy from the object
store); pending = the ``PendingIds`` hashes a stage with upstream ships instead (all ids pending: the most). The load average is printed beside every figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.done_ids import DoneIds, PendingIds  # noqa: E402

MiB = 2**20
TARGET = 10_076_613  # VIDAL-10M's entries


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def synthetic_ids(n: int, seed: int = 0) -> pa.Array:
    # YouTube-shaped: 11 characters, like VIDAL's ids
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", np.uint8)
    chars = alphabet[rng.integers(0, len(alphabet), size=(n, 11))]
    ids = pa.array(chars.view("S11").ravel().astype(str))
    return ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids


def batches(ids: pa.Array, n: int, size: int = 1024) -> list[pa.Array]:
    rng = np.random.default_rng(1)
    fresh = synthetic_ids(n // 2, seed=2)  # ids of another draw: almost surely not done
    out = []
    for _ in range(50):
        done_part = ids.take(pa.array(rng.integers(0, len(ids), size // 2)))
        new_part = fresh.take(pa.array(rng.integers(0, len(fresh), size // 2)))
        out.append(pa.concat_arrays([done_part, new_part]))
    return out


def measure(n: int, repeat: int) -> dict[str, float]:
    ids = synthetic_ids(n)
    queries = batches(ids, n)
    r: dict[str, float] = {"ids": n}

    payload = pickle.dumps(ids.to_pylist())  # what the old runner put in the object store
    gc.collect()
    before = rss()
    t = time.perf_counter()
    old = frozenset(pickle.loads(payload))
    r["old_build_s"] = time.perf_counter() - t
    r["old_worker_mib"] = (rss() - before) / MiB
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        for q in queries:
            pa.array([v not in old for v in q.to_pylist()], pa.bool_())
        times.append(time.perf_counter() - t)
    r["old_filter_ids_per_s"] = len(queries) * 1024 / statistics.median(times)
    del old, payload
    gc.collect()

    t = time.perf_counter()
    new = DoneIds.build(ids)
    r["new_build_s"] = time.perf_counter() - t  # on the driver, once per stage
    r["new_shared_mib"] = new.nbytes / MiB
    buffers: list[pickle.PickleBuffer] = []
    inband = pickle.dumps(new, protocol=5, buffer_callback=buffers.append)
    r["new_inband_bytes"] = len(inband)
    r["new_out_of_band_mib"] = sum(b.raw().nbytes for b in buffers) / MiB
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        for q in queries:
            new.is_done(q)
        times.append(time.perf_counter() - t)
    r["new_filter_ids_per_s"] = len(queries) * 1024 / statistics.median(times)
    assert new.is_done(queries[0])[:512].all()

    # What a stage with upstream ships instead: the hashes of the ids still to do (at most all of them)
    t = time.perf_counter()
    pending = PendingIds.build(ids)
    r["pending_build_s"] = time.perf_counter() - t
    r["pending_shared_mib"] = pending.nbytes / MiB
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        for q in queries:
            pending.is_pending(q)
        times.append(time.perf_counter() - t)
    r["pending_filter_ids_per_s"] = len(queries) * 1024 / statistics.median(times)
    return r


ROWS_PER_PART = 256
COMPACT_MB = 128


def load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def synthetic_part(ids: pa.Array, start: int) -> pa.Table:
    n = len(ids)
    failed = (np.arange(start, start + n) % 50) == 0  # 2% failed, with a reason
    return pa.table(
        {
            "video_id": pa.array(["youtube-" + v for v in ids.to_pylist()], pa.string()),
            "status": pa.array(np.where(failed, "failed", "ok").tolist(), pa.string()),
            "error": pa.array([("download: HTTP Error 404" if f else None) for f in failed], pa.string()),
            "duration": pa.array(np.linspace(1.0, 20.0, n)),
        }
    )


def _timed(r: dict[str, Any], key: str, fn: Any) -> Any:
    t = time.perf_counter()
    out = fn()
    r[key] = round(time.perf_counter() - t, 3)
    return out


def _storage(root: str) -> None:
    from contracts import store

    if root.startswith("s3://"):
        from tests.s3server import S3Server

        store.configure(S3Server(port=int(os.environ["VIDAL_BENCH_S3_PORT"])).storage())


def write_manifest(n: int, root: str, written_file: str = "", stage: str = "probe") -> dict[str, Any]:
    """The manifest a stage of n rows leaves: n / 256 parts, written by eight threads (many workers
    write at once in a run) through the runner's writer (``stage_output.write_part``), whose stats rows
    the driver collects (``collect``): ``written_file`` gets what the driver then holds (each part's
    ``_parts.json`` entry and its ids' hashes) for the stage end's step. Its own process, so the phases'
    peak below is theirs alone."""
    from pipeline.stage_output import StageReport, collect, write_part

    _storage(root)
    ids = synthetic_ids(n)

    def write(i: int) -> pa.Table:
        return write_part(synthetic_part(ids.slice(i, ROWS_PER_PART), i), root, stage)

    r: dict[str, Any] = {}
    with ThreadPoolExecutor(8) as pool:
        rows = _timed(r, "write_parts_s", lambda: list(pool.map(write, range(0, n, ROWS_PER_PART))))
    report = StageReport(stage=stage)
    collect(iter(rows), report, n, 1e9)
    if written_file:
        with open(written_file, "wb") as f:
            pickle.dump(report.written, f, protocol=5)
    r["written_hashes_mib"] = round(len(report.written.buffer) / MiB, 1)
    return r


def start(r: dict[str, Any], tag: str, root: str, stage: str) -> None:
    """Time each control-plane phase of a stage's start and end over the manifest as it is (``tag``:
    before or after compaction), holding at once what the runner's driver holds at a stage start: the done
    ids, their ``DoneIds``, the upstream's ok ids and the ``PendingIds`` built from them."""
    from contracts import manifest
    from contracts.status import OK

    _storage(root)
    r[f"{tag}_load"] = load()
    r[f"{tag}_parts"] = len(_timed(r, f"{tag}_list_s", lambda: manifest.part_sizes(root, stage)))
    _timed(r, f"{tag}_footers_s", lambda: manifest.check_readable(root, stage))
    done = _timed(r, f"{tag}_done_ids_read_s", lambda: manifest.done_ids(root, stage))
    built = _timed(r, f"{tag}_done_ids_build_s", lambda: DoneIds.build(done))
    r["done_ids_node_mib"] = round(built.nbytes / MiB, 1)
    ok = _timed(
        r, f"{tag}_upstream_ok_ids_s", lambda: manifest.read_columns(root, stage, ["video_id"], status=OK)
    )
    held = _timed(r, f"{tag}_pending_s", lambda: PendingIds.build(built.pending(ok["video_id"])))
    r["pending_node_mib"] = round(held.nbytes / MiB, 1)  # what the workers get
    r[f"{tag}_start_peak_mib"] = round(peak_rss_mib(), 1)


def control(n: int, root: str, tag: str, stage: str = "probe") -> dict[str, Any]:
    """A stage's start (the runner drops the start's ids once they are shipped); after compaction, also
    the end of a resumed stage that wrote 1,024 new rows (the older parts' ids read for the check)."""
    r: dict[str, Any] = {}
    start(r, tag, root, stage)
    if tag == "after":
        resumed_end(r, root, stage)
    return r


def resumed_end(r: dict[str, Any], root: str, stage: str) -> None:
    """The end of a resumed stage over the compacted manifest: 1,024 new rows in four reported parts; the
    duplicate check reads the compacted parts' ids; then the ``_SUCCESS`` totals (``_parts.json``)."""
    from contracts import manifest
    from contracts.stage_end import end_stage
    from pipeline.stage_output import StageReport, collect, write_part

    gc.collect()
    ids = synthetic_ids(1024, seed=7)
    report = StageReport(stage=stage)
    collect(
        iter([write_part(synthetic_part(ids.slice(i, 256), i), root, stage) for i in range(0, 1024, 256)]),
        report,
        1024,
        1e9,
    )
    c = _timed(
        r, "after_resumed_end_s", lambda: end_stage(root, stage, COMPACT_MB * MiB, report.written, _threads)
    )
    r["after_resumed_end_parts_read"] = c["parts_read"]
    _timed(r, "after_success_totals_s", lambda: manifest.status_counts(root, stage))
    r["after_driver_peak_mib"] = round(peak_rss_mib(), 1)


def _threads(fn: Any, groups: list[Any]) -> list[Any]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(fn, groups))


def end_child(n: int, root: str, written_file: str = "", stage: str = "probe") -> dict[str, Any]:
    """The first end of the stage (``contracts.stage_end.end_stage``) as the runner's driver runs it, given
    what the part writers reported (``written_file``; none: a killed driver's rerun, every part read).
    The merges run in eight processes standing in for the runner's Ray tasks, so this process's peak is
    the driver's alone; ``end_check_s`` is the duplicate check's share (sorting the reported hashes)."""
    from concurrent.futures import ProcessPoolExecutor

    from contracts import stage_end

    _storage(root)
    written = None
    if written_file:
        with open(written_file, "rb") as f:
            written = pickle.load(f)
        by_part = [(name, written.hashes()[slice(*span)]) for name, span in written.spans.items()]
        r0: dict[str, Any] = {}
        _timed(r0, "end_check_s", lambda: stage_end._holding_a_hash_twice(by_part))
        del by_part
    else:
        r0 = {}
    gc.collect()
    r: dict[str, Any] = {"end_load": load(), **r0, "end_reported": written is not None}
    with ProcessPoolExecutor(8, initializer=_storage, initargs=(root,)) as pool:
        c = _timed(
            r,
            "end_s",
            lambda: stage_end.end_stage(
                root, stage, COMPACT_MB * MiB, written, lambda f, g: list(pool.map(f, g))
            ),
        )
    r.update(end_parts_read=c["parts_read"], parts_after=c["parts_after"], end_merges=c["merges"])
    r["end_driver_peak_mib"] = round(peak_rss_mib(), 1)
    return r


def project(results: list[dict[str, Any]], keys: list[str], size_key: str = "rows") -> list[str]:
    """Linear projection to TARGET from the two sizes, with the arithmetic shown."""
    lo, hi = results[0], results[-1]
    lines = []
    for key in keys:
        if key not in lo or key not in hi:
            continue
        slope = (hi[key] - lo[key]) / (hi[size_key] - lo[size_key])
        proj = hi[key] + slope * (TARGET - hi[size_key])
        lines.append(
            f"  {key} at 10M: {hi[key]:g} + ({hi[key]:g} - {lo[key]:g}) / {(hi[size_key] - lo[size_key]) / 1e6:g}M "
            f"x {(TARGET - hi[size_key]) / 1e6:.2f}M = {proj:.1f}"
        )
    return lines


def _child(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{args}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_control(sizes: list[int], backends: list[str], unreported: bool = False) -> None:
    for backend in backends:
        server, tmp = None, tempfile.mkdtemp(prefix="vidal-bench-scale-")
        if backend == "s3":
            from tests.s3server import S3Server

            server = S3Server().start()
            os.environ["VIDAL_BENCH_S3_PORT"] = str(server.port)
        results = []
        for n in sizes:
            root = f"{server.make_bucket('bench')}/scale-{n}" if server else f"{tmp}/scale-{n}"
            written = f"{tmp}/written-{n}.pkl"
            r = {"rows": n, "backend": backend, **_child("_write", str(n), root, written)}
            r.update(_child("_control", str(n), root, "before"))
            r.update(_child("_end", str(n), root, written))
            r.update(_child("_control", str(n), root, "after"))
            if unreported:  # a killed driver's rerun: the same manifest again, its end with no report
                again = f"{root}-unreported"
                _child("_write", str(n), again)
                r.update({f"unreported_{k}": v for k, v in _child("_end", str(n), again).items()})
            results.append(r)
            print(json.dumps(results[-1]), flush=True)
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if len(results) >= 2:
            keys = [k for k, v in results[-1].items() if k.endswith("_s") or k.endswith("_mib")]
            print(f"{backend}: projected to {TARGET:,} rows", *project(results, keys), sep="\n", flush=True)


def _pass_through(batch: pa.Table) -> pa.Table:
    """The benchmark's stage: every row ok, nothing computed."""
    n = len(batch)
    return batch.append_column("status", pa.array(["ok"] * n)).append_column(
        "error", pa.nulls(n, pa.string())
    )


def workers(n: int, compact: bool) -> dict[str, Any]:
    """The runner's per-stage plan on a local Ray instance (2 CPUs) over an n-row manifest, half of it
    done: one read task per part (``pipeline.upstream._read_ok``), the pending-id filter, the manifest
    writer (``pipeline.stage_output.write_part``), with ``rows_per_part`` blocks between them. The largest Ray
    worker's USS (private memory) and RSS are sampled every 0.5 s."""
    import psutil
    import ray

    from contracts import manifest
    from pipeline import stage_output, upstream, workers

    tmp = tempfile.mkdtemp(prefix="vidal-bench-workers-")
    root, stage = tmp, "probe"
    write_manifest(n, root, stage=stage)
    if compact:
        manifest.compact(root, stage, COMPACT_MB * MiB)
    all_ids = manifest.done_ids(root, stage)
    done = DoneIds.build(all_ids.slice(0, n // 2))  # the first half counts as done downstream
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    r: dict[str, Any] = {"rows": n, "compacted": compact, "parts": len(manifest.part_files(root, stage))}
    r["load_before"] = load()
    pending = PendingIds.build(done.pending(all_ids))
    r["pending_shared_mib"] = round(pending.nbytes / MiB, 1)
    ok_ids = manifest.read_columns(root, stage, ["video_id"], status="ok")["video_id"]
    expected = int((~done.is_done(ok_ids)).sum())
    del all_ids, ok_ids
    peak = {"uss": 0, "rss": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for proc in psutil.Process().children(recursive=True):  # this instance's workers only
                try:
                    if proc.cmdline()[:1] and proc.cmdline()[0].startswith("ray::"):
                        m = proc.memory_full_info()
                        peak["uss"], peak["rss"] = max(peak["uss"], m.uss), max(peak["rss"], m.rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            time.sleep(0.5)

    threading.Thread(target=sample, daemon=True).start()
    t = time.perf_counter()
    ds = upstream._read_ok(root, stage, ["duration"])
    ds = ds.map_batches(workers.drop_done, batch_format="pyarrow", fn_kwargs={"done_ref": [ray.put(pending)]})
    ds = ds.repartition(target_num_rows_per_block=ROWS_PER_PART).map_batches(
        _pass_through, batch_format="pyarrow"
    )
    ds = ds.map_batches(
        stage_output.write_part,
        batch_size=ROWS_PER_PART,
        batch_format="pyarrow",
        fn_kwargs={"root": root, "stage": "out", "token": None},
    )
    written = sum(b["rows"] for b in ds.iter_rows())
    r["plan_s"] = round(time.perf_counter() - t, 1)
    stop.set()
    assert written == expected, (written, expected)
    r["largest_worker_uss_mib"] = round(peak["uss"] / MiB, 1)
    r["largest_worker_rss_mib"] = round(peak["rss"] / MiB, 1)
    r["load_after"] = load()
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    return r


def vidal_json(path: Path, n: int) -> None:
    """A file in the released VIDAL-10M shape: one object, YouTube id -> captions (about 600 bytes each)."""
    rng = np.random.default_rng(0)
    alphabet = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", np.uint8)
    caps = json.dumps([f" a dog on a beach, frame {j}" for j in range(8)])
    with open(path, "w", encoding="utf-8") as out:
        out.write("{")
        for i in range(n):
            key = alphabet[rng.integers(0, 64, 11)].tobytes().decode()
            out.write(
                f'{"," if i else ""}\n "{key}": {{"folder": "coco_vat_{i % 50}", "mplug": "This video shows a '
                f'dog running on a beach {i}.", "polish_mplug": "a dog running along a sunny beach", "ofa": '
                f'{caps}, "sound_mplug": "waves crashing and a dog barking", "raw": "Dog at the beach {i} '
                f'#dog #shorts"}}'
            )
        out.write("\n}\n")


def discover(entries: int, stage: bool) -> dict[str, Any]:
    """The VIDAL-10M reader alone (stream -> candidate rows), one process: rows/s and peak RSS; with
    ``stage``, then the whole discover stage over the same file (``python -m pipeline.run``)."""
    from stages.sources.vidal10m import read_vidal10m

    tmp = Path(tempfile.mkdtemp(prefix="vidal-bench-json-"))
    f = tmp / "vidal10m.json"
    vidal_json(f, entries)
    r: dict[str, Any] = {
        "entries": entries,
        "file_mb": round(f.stat().st_size / 1e6, 1),
        "load_before": load(),
    }
    t = time.perf_counter()
    rows = sum(len(b) for b in read_vidal10m(str(f)))
    r["read_s"] = round(time.perf_counter() - t, 2)
    r["rows_per_s"] = round(rows / r["read_s"])
    r["peak_rss_mib"] = round(peak_rss_mib(), 1)
    assert rows == entries
    if stage:  # the whole discover stage: a fresh local Ray instance (2 CPUs), rules, dedup, manifest writes
        t = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline.run",
                "--root",
                str(tmp / "root"),
                "--stage",
                "discover",
                "--quiet",
            ]
            + [
                "--set",
                f'discover.vidal10m=["{f}"]',
                "--set",
                "run.ray_address=local",
                "--set",
                "run.num_cpus=2",
            ],
            cwd=Path(__file__).resolve().parent.parent,
            check=True,
            capture_output=True,
        )
        r["stage_wall_s"] = round(time.perf_counter() - t, 1)
        success = json.loads((tmp / "root" / "discover" / "_SUCCESS.json").read_text())
        r["stage_rows"], r["stage_rows_per_s"] = success["rows_in"], success["rows_per_s"]
        r["stage_parts"] = len(list((tmp / "root" / "discover").glob("part-*.parquet")))
    r["load_after"] = load()
    shutil.rmtree(tmp, ignore_errors=True)
    return r


def dedup(n: int) -> dict[str, Any]:
    """Discover's run-wide dedup index (one actor's ``KeyIndex``): ids claimed in chunks of 2048."""
    from stages.sources.dedup import KeyIndex, key_of

    ids = ["youtube-" + v for v in synthetic_ids(n).to_pylist()]
    gc.collect()
    before = rss()
    index = KeyIndex()
    t = time.perf_counter()
    for i in range(0, n, 2048):
        index.claim([key_of(v) for v in ids[i : i + 2048]], f"vidal10m:0:{i // 2048}")
    index._merge()
    r = {"ids": n, "claim_s": round(time.perf_counter() - t, 2)}
    r["arrays_mib"] = round((index.keys.nbytes + index.owners.nbytes) / MiB, 1)
    r["rss_growth_mib"] = round((rss() - before) / MiB, 1)  # + the owner-name dict (one entry per chunk)
    r["mib_per_million"] = round(r["rss_growth_mib"] / (n / 1e6), 1)
    return r


CHILDREN = {"_write": write_manifest, "_control": control, "_end": end_child}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "what",
        nargs="?",
        default="resume",
        choices=["resume", "control", "workers", "discover", "dedup", *CHILDREN],
    )
    p.add_argument("args", nargs="*")
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000])
    p.add_argument("--backend", nargs="+", default=["local", "s3"], choices=["local", "s3"])
    p.add_argument("--entries", type=int, default=1_000_000)
    p.add_argument("--stage", action="store_true", help="discover: also run the whole stage")
    p.add_argument(
        "--unreported", action="store_true", help="control: also the stage end of a killed driver's rerun"
    )
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    if a.what in CHILDREN:  # one step of one configuration, in its own process (see run_control)
        print(json.dumps(CHILDREN[a.what](int(a.args[0]), *a.args[1:])))
        return
    print("load average before:", load(), flush=True)
    if a.what == "control":
        run_control(a.sizes, a.backend, a.unreported)
    elif a.what == "workers":
        for n in a.sizes:
            for compact in (False, True):
                print(json.dumps(workers(n, compact)), flush=True)
    elif a.what == "discover":
        print(json.dumps(discover(a.entries, a.stage)))
    elif a.what == "dedup":
        results = [dedup(n) for n in a.sizes]
        for r in results:
            print(json.dumps(r))
        if len(results) >= 2:
            print(*project(results, ["arrays_mib", "rss_growth_mib", "claim_s"], "ids"), sep="\n")
    else:
        results = [measure(n, a.repeat) for n in a.sizes]
        for r in results:
            print({k: round(v, 3) for k, v in r.items()})
        if len(results) >= 2:
            keys = ["old_worker_mib", "new_shared_mib", "pending_shared_mib", "old_build_s", "new_build_s"]
            print(*project(results, keys, "ids"), sep="\n")
    print("load average after:", load())


if __name__ == "__main__":
    main()
