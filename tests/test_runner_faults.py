"""Runner-side bad input: a stage with zero ok rows does not abort the run, --force checks the upstream
before deleting, an unreadable manifest part is one clear line (exit 2), rows that failed for a
transient reason are retried by a plain rerun, and the summary counts failures over whole manifests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contracts import manifest, store
from pipeline.config import load_config
from pipeline.runner import run_pipeline, run_stage
from pipeline.stage_output import failure_note
from pipeline.upstream import StageInputError
from tests.conftest import write_list
from tests.test_faults_shard import make_probe_root

REPO = Path(__file__).resolve().parent.parent
STAGES = "run.stages=[discover, download, probe, shard]"


def cli(root: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "pipeline/run.py",
            "--config",
            "configs/demo.yaml",
            "--root",
            str(root),
            "--set",
            "run.ray_address=local",
            "--set",
            "run.num_cpus=2",
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )


def test_a_stage_with_zero_ok_rows_does_not_abort_the_run(tmp_path):
    inputs = write_list(
        tmp_path / "list.csv", [{"path": str(tmp_path / f"gone-{i}.mp4"), "title": f"t{i}"} for i in range(5)]
    )
    root = tmp_path / "root"
    first = cli(root, "--input", str(inputs), "--set", STAGES)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "shards: 0 tars, 0 samples" in first.stdout
    assert "5 rows failed (download 5)" in first.stdout, first.stdout
    again = cli(root, "--input", str(inputs), "--set", STAGES)  # nothing new fails; the summary still says so
    assert again.returncode == 0, again.stderr[-3000:]
    assert "5 rows failed (download 5)" in again.stdout, again.stdout


def test_force_checks_the_upstream_before_deleting(tmp_path, ray_local):
    root = tmp_path / "root"
    make_probe_root(root, n=10)  # probe's output, but not the download output it is made from
    config = load_config(REPO / "configs" / "demo.yaml", [f"run.root={root}", "run.demo_media="])
    with pytest.raises(StageInputError, match="download"):
        run_stage(config, "probe", "force")
    assert len(manifest.read_columns(str(root), "probe", ["video_id"])) == 10  # nothing was deleted


def test_a_truncated_manifest_part_is_one_clear_line(tmp_path):
    root = tmp_path / "root"
    make_probe_root(root, n=20)
    part = Path(manifest.part_files(str(root), "probe")[1])
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    r = cli(root, "--stage", "shard")
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: manifest part ") and part.name in last and "remove that file" in last, last
    assert "Traceback" not in r.stderr
    with pytest.raises(manifest.ManifestPartError, match=part.name):  # the footer check of the hash-join path
        manifest.check_readable(str(root), "probe")


def test_transient_failures_are_retried_by_a_plain_rerun(tmp_path, ray_local, good_videos):
    inputs = write_list(tmp_path / "list.csv", [{"path": str(p), "title": p.stem} for p in good_videos[:3]])
    root = tmp_path / "root"
    config = load_config(
        REPO / "configs" / "demo.yaml",
        [
            f"run.root={root}",
            "run.demo_media=",
            f"discover.inputs=[{inputs}]",
            "run.stages=[discover, download, probe]",
        ],
    )
    run_pipeline(config, ["discover", "download", "probe"])
    (uri,) = manifest.part_files(str(root), "probe")
    table = pq.read_table(uri)
    ids = table["video_id"].to_pylist()
    errors = ["transient: no space left on device (killed worker)", "not a readable media file", None]
    status = ["failed", "failed", "ok"]
    table = table.set_column(table.schema.get_field_index("status"), "status", pa.array(status))
    table = table.set_column(table.schema.get_field_index("error"), "error", pa.array(errors, pa.string()))
    store.write_parquet(uri, table)
    reports = run_pipeline(config, ["probe"])  # a plain rerun: no --retry-failed
    assert reports[0].rows_in == 1 and reports[0].counts["ok"] == 1
    rows = {
        r["video_id"]: r
        for p in manifest.part_files(str(root), "probe")
        for r in pq.read_table(p).to_pylist()
    }
    assert len(rows) == 3 and rows[ids[0]]["status"] == "ok"
    assert rows[ids[1]]["status"] == "failed" and rows[ids[1]]["error"] == "not a readable media file"
    note = failure_note(reports, str(root))  # this run failed nothing; the manifest still holds one failure
    assert note is not None and note.startswith("1 rows failed (probe 1)")
