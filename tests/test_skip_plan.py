"""A rerun in which a stage's upstream holds nothing the stage has not done starts no plan for it (issue 18),
and still reports what it skipped and rewrites its _SUCCESS.json; one pending row brings the plan back."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq

from contracts import manifest
from pipeline import runner, stage_output
from pipeline.runner import run_pipeline
from tests.conftest import write_list
from tests.test_pipeline_run import config_for, read_manifest

STAGES = ["discover", "download", "probe", "shard"]


def _count_plans(monkeypatch) -> list[str]:
    started: list[str] = []
    real = runner._execute

    def counting(ds, stage, *args, **kwargs):
        started.append(stage.name)
        return real(ds, stage, *args, **kwargs)

    monkeypatch.setattr(runner, "_execute", counting)
    return started


def test_all_done_rerun_starts_no_plan_and_keeps_success(tmp_path, ray_local, good_videos, monkeypatch):
    rows = [{"path": str(p), "title": p.stem, "hashtags": ""} for p in good_videos[:4]]
    inputs = write_list(tmp_path / "videos.csv", rows)
    root = tmp_path / "root"
    first = run_pipeline(config_for(root, inputs), STAGES)
    assert [r.rows_in for r in first][1:] == [4, 4, 4]
    before = {s: sorted(r["video_id"] for r in read_manifest(root, s)) for s in STAGES}

    started = _count_plans(monkeypatch)
    again = run_pipeline(config_for(root, inputs), STAGES)
    assert started == ["discover"]  # a source stage has no upstream to compare; the others start nothing
    assert [r.rows_in for r in again] == [0, 0, 0, 0]
    assert [r.skipped for r in again][1:] == [4, 4, 4]
    for s in STAGES[1:]:
        success = manifest.read_success(str(root), s)
        assert success is not None and success["skipped_already_done"] == 4 and success["rows_in"] == 0
        assert success["totals"]["ok"] == 4
    assert {s: sorted(r["video_id"] for r in read_manifest(root, s)) for s in STAGES} == before
    assert "skipped" in stage_output.summary_table(again)

    # one probe row removed: probe's plan runs again, for that row only
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    part = manifest.part_files(str(copy), "probe")[0]
    table = pq.read_table(part)
    lost = table["video_id"][0].as_py()
    pq.write_table(table.slice(1), part)
    started.clear()
    third = run_pipeline(config_for(copy, inputs), STAGES)
    assert "probe" in started and "download" not in started
    assert third[2].rows_in == 1 and third[2].skipped == 3
    assert sorted(r["video_id"] for r in read_manifest(copy, "probe")) == before["probe"]
    assert lost in before["probe"]
