"""Download throughput over loopback: videos/s, MB/s and videos per CPU-second, and peak memory as the
URL count grows 10x.

A server in its own process serves N URLs of ~200 KB MP4 files (8 distinct noise clips, so that the
codec cannot shrink them). Modes:

- ``http``: ``DownloadStage.process`` in this process, batches of ``--batch`` rows, ``--threads``
  threads: the plain streaming HTTP path that direct media links take.
- ``ytdlp``: the same with ``download.route: yt-dlp`` (the generic extractor for every URL).
- ``runner``: discover + download through ``pipeline.runner`` on a local Ray instance with
  ``--cpus`` CPUs (download tasks of ``--task-cpus`` CPUs each), timed for the download stage.
- ``memory``: peak RSS of the ``http`` mode in fresh processes at N and 10 N URLs.
- ``v2d``: video2dataset on the same URLs, with ``--v2d-python`` pointing at a venv where it is
  installed (it is not a dependency of this project).

    .venv/bin/python bench/bench_download.py --n 600 --modes http,ytdlp,runner,memory
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_clips(d: Path, k: int = 8) -> list[bytes]:
    """k distinct ~200 KB MP4 files: 20 frames of 160x120 noise."""
    import numpy as np

    from pipeline.synthetic import encode_video

    out = []
    for i in range(k):
        frames = np.random.default_rng(i).integers(0, 255, (20, 120, 160, 3), dtype=np.uint8)
        encode_video(d / f"{i}.mp4", frames, 15)
        out.append((d / f"{i}.mp4").read_bytes())
    return out


def _serve(clips: list[bytes], port_q: mp.Queue) -> None:
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):  # noqa: N802
            i = int(self.path.rsplit("/", 1)[-1].split(".")[0])
            body = clips[i % len(clips)]
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    srv.request_queue_size = 1024
    port_q.put(srv.server_address[1])
    srv.serve_forever()


def start_server(clips: list[bytes]) -> tuple[mp.Process, int]:
    q: mp.Queue = mp.Queue()
    p = mp.Process(target=_serve, args=(clips, q), daemon=True)
    p.start()
    return p, q.get(timeout=30)


def urls(port: int, n: int) -> list[str]:
    return [f"http://127.0.0.1:{port}/v/{i}.mp4" for i in range(n)]


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM starts afresh at exec, unlike getrusage's ru_maxrss)."""
    with open("/proc/self/status") as f:
        return int(next(ln for ln in f if ln.startswith("VmHWM:")).split()[1]) / 1024


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_inprocess(port: int, n: int, threads: int, batch: int, route: str) -> dict:
    import pyarrow as pa

    from stages.base import RunContext
    from stages.download import DownloadConfig, DownloadStage

    with tempfile.TemporaryDirectory() as d:
        stage = DownloadStage(
            DownloadConfig(
                threads=threads, per_host_connections=threads, route=route, allow_private_addresses=True
            ),
            RunContext(root=d),
        )
        stage.setup()
        all_urls = urls(port, n)
        # warm-up (threads, sessions, yt-dlp instances) outside the timing
        stage.process(
            pa.Table.from_pylist(
                [{"video_id": f"w{i}", "url": u, "path": None} for i, u in enumerate(all_urls[:threads])]
            )
        )
        t0, c0 = time.perf_counter(), cpu_s()
        ok = nbytes = 0
        for s in range(0, n, batch):
            rows = [
                {"video_id": f"v{i}", "url": all_urls[i], "path": None} for i in range(s, min(n, s + batch))
            ]
            out = stage.process(pa.Table.from_pylist(rows))
            ok += sum(st == "ok" for st in out["status"].to_pylist())
            nbytes += sum(b or 0 for b in out["bytes"].to_pylist())
        wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    return {
        "mode": f"{route} in one process",
        "n": n,
        "ok": ok,
        "wall_s": round(wall, 2),
        "videos_per_s": round(ok / wall, 1),
        "MB_per_s": round(nbytes / 1e6 / wall, 1),
        "cpu_s": round(cpu, 2),
        "videos_per_cpu_s": round(ok / cpu, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def run_runner(port: int, n: int, cpus: int, task_cpus: float, threads: int, batch: int) -> dict:
    """Time the download stage on Ray for n URLs and for n/10: the difference gives the steady rate,
    free of the fixed cost of starting a stage's plan (workers, manifest reads and writes)."""
    import pyarrow.parquet as pq
    import ray

    from pipeline.config import load_config
    from pipeline.runner import init_ray, run_stage

    init_ray("local", cpus)
    timings = {}
    with tempfile.TemporaryDirectory() as d:
        for count in (50, max(100, n // 10), n):  # the first run only starts the worker processes
            lst = Path(d) / f"urls-{count}.csv"
            with open(lst, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["url", "title"])
                w.writerows([u, f"clip {i}"] for i, u in enumerate(urls(port, count)))
            root = f"{d}/root-{count}"
            cfg = load_config(
                None,
                [
                    f"run.root={root}",
                    "run.stages=[discover, download]",
                    f"discover.inputs=[{lst}]",
                    f"download.threads={threads}",
                    f"download.per_host_connections={threads}",
                    f"download.num_cpus={task_cpus}",
                    f"download.batch_size={batch}",
                    "run.rows_per_part=1000",
                    "download.allow_private_addresses=true",
                ],
            )
            run_stage(cfg, "discover")
            t0 = time.perf_counter()
            rep = run_stage(cfg, "download")
            wall = time.perf_counter() - t0
            sizes = pq.read_table(f"{root}/download", columns=["bytes"])["bytes"].to_pylist()
            timings[count] = (wall, rep.counts["ok"], sum(b or 0 for b in sizes))
    ray.shutdown()
    (small, (t_s, ok_s, _)), (big, (t_b, ok_b, bytes_b)) = sorted(timings.items())[1:]
    steady = (ok_b - ok_s) / (t_b - t_s)
    return {
        "mode": f"runner, {cpus} CPUs, tasks of {task_cpus} CPU x {threads} threads, batches of {batch}",
        "n": n,
        "ok": ok_b,
        "wall_s": round(t_b, 2),
        "videos_per_s_with_startup": round(ok_b / t_b, 1),
        "fixed_s": round(t_s - ok_s / steady, 1),
        "videos_per_s": round(steady, 1),
        "MB_per_s": round(steady * bytes_b / ok_b / 1e6, 1),
        "videos_per_s_per_core": round(steady / cpus, 1),
    }


def run_memory(port: int, n: int, threads: int, batch: int) -> list[dict]:
    out = []
    for count in (n, 10 * n):
        cmd = [
            sys.executable,
            __file__,
            "--child-http",
            str(port),
            "--n",
            str(count),
            "--threads",
            str(threads),
            "--batch",
            str(batch),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


V2D_CONFIG = """subsampling: {}
reading:
  yt_args: {download_size: 360, download_audio_rate: 44100, yt_metadata_args: null}
  timeout: 20
  sampler: null
storage:
  number_sample_per_shard: %d
  oom_shard_count: 5
  captions_are_subtitles: False
distribution:
  processes_count: %d
  thread_count: %d
  subjob_size: 1000
  distributor: "multiprocessing"
"""


def run_v2d(port: int, n: int, python: str, processes: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        lst = Path(d) / "urls.csv"
        with open(lst, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["url", "caption"])
            w.writerows([u, f"clip {i}"] for i, u in enumerate(urls(port, n)))
        # enough shards for every process; steady state is read from the shards' own start/end times
        (Path(d) / "config.yaml").write_text(V2D_CONFIG % (max(50, n // (4 * processes)), processes, threads))
        code = (
            "import sys, time; from video2dataset import video2dataset; t=time.perf_counter(); "
            f"video2dataset(url_list='{lst}', output_folder='{d}/out', output_format='files', input_format='csv', "
            f"url_col='url', caption_col='caption', config='{d}/config.yaml', "
            "encode_formats={'video': 'mp4'}); print('WALL', time.perf_counter()-t)"
        )
        res = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=d)
        wall = float(next(ln.split()[1] for ln in res.stdout.splitlines() if ln.startswith("WALL")))
        files = [p for p in Path(d, "out").rglob("*.mp4")]
        nbytes = sum(p.stat().st_size for p in files)
        stats = [json.loads(p.read_text()) for p in Path(d, "out").glob("*_stats.json")]
        busy = max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats)
    return {
        "mode": f"video2dataset, {processes} processes x {threads} threads",
        "n": n,
        "ok": len(files),
        "wall_s": round(wall, 2),
        "steady_s": round(busy, 2),
        "videos_per_s": round(len(files) / busy, 1),
        "MB_per_s": round(nbytes / 1e6 / busy, 1),
        "videos_per_s_with_startup": round(len(files) / wall, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--cpus", type=int, default=os.cpu_count())
    p.add_argument("--task-cpus", type=float, default=1.0)
    p.add_argument("--modes", default="http,ytdlp,runner,memory")
    p.add_argument("--v2d-python", help="python of a venv with video2dataset installed (mode v2d)")
    p.add_argument("--child-http", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child_http:  # memory mode's fresh process
        print(json.dumps(run_inprocess(a.child_http, a.n, a.threads, a.batch, "http")))
        return
    with tempfile.TemporaryDirectory() as d:
        clips = make_clips(Path(d))
    print(
        f"# {len(clips)} clips, {sum(map(len, clips)) / len(clips) / 1e3:.0f} KB on average; {os.cpu_count()} CPUs",
        flush=True,
    )
    server, port = start_server(clips)
    try:
        for mode in a.modes.split(","):
            if mode == "http":
                results = [run_inprocess(port, a.n, a.threads, a.batch, "http")]
            elif mode == "ytdlp":
                results = [run_inprocess(port, min(a.n, 300), a.threads, a.batch, "yt-dlp")]
            elif mode == "runner":
                results = [run_runner(port, a.n, a.cpus, a.task_cpus, a.threads, a.batch)]
            elif mode == "memory":
                results = run_memory(port, a.n // 2, a.threads, a.batch)
            elif mode == "v2d":
                results = [run_v2d(port, a.n, a.v2d_python, a.cpus, a.threads)]
            else:
                raise SystemExit(f"unknown mode {mode}")
            for r in results:
                print(json.dumps(r), flush=True)
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
