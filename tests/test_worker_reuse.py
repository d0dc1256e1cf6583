"""Model stages without a GPU run on Ray's reused worker processes (issue 18): in one run, the same worker
process serves several model stages and imports torch once; a process holds at most one model stage's
instance (the next stage's first batch frees the previous model), so models do not pile up across stages,
and torch gets the threads of the process's current task.

Which process imported what is observed from outside the code under test: the driver runs with a
``sitecustomize`` (on ``PYTHONPATH``, inherited by the local Ray instance's workers) that appends a
line to ``<pid>.log`` whenever a process executes one of the watched modules."""

from __future__ import annotations

import collections
import gc
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from contracts import manifest
from pipeline import workers
from pipeline.config import load_config, section_hash
from stages.base import RunContext
from tests.test_faults_shard import make_probe_root

REPO = Path(__file__).resolve().parent.parent
MODEL_STAGES = ["caption", "depth", "infrared"]  # the demo's tiny models, all reading probe's frames

SITECUSTOMIZE = """
import os, sys

_LOG = os.environ["VIDAL_IMPORT_LOG"]
_WATCH = {WATCH!r}


class _Logged:  # the module's own loader, recording that this process executes the module
    def __init__(self, name, real):
        self._name, self._real = name, real

    def __getattr__(self, attr):
        return getattr(self._real, attr)

    def create_module(self, spec):
        return self._real.create_module(spec)

    def exec_module(self, module):
        with open(os.path.join(_LOG, f"{{os.getpid()}}.log"), "a") as f:
            f.write(self._name + "\\n")
        self._real.exec_module(module)


class _Watch:
    def find_spec(self, name, path=None, target=None):
        if name not in _WATCH:
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    spec.loader = _Logged(name, spec.loader)
                    return spec
        return None


sys.meta_path.insert(0, _Watch())
"""


def imports_by_process(log_dir: Path) -> dict[int, collections.Counter]:
    return {int(p.stem): collections.Counter(p.read_text().split()) for p in log_dir.glob("*.log")}


@pytest.mark.parametrize("reuse", [True, False], ids=["reused", "pool-per-stage"])
def test_model_stages_share_worker_processes_and_import_torch_once(tmp_path, reuse):
    """And with ``run.reuse_workers: false``, each model stage gets its own actor pool, as before."""
    root = tmp_path / "root"
    ids = make_probe_root(root, n=6, jpeg_size=(64, 48))
    hook, logs = tmp_path / "hook", tmp_path / "imports"
    hook.mkdir()
    logs.mkdir()
    watch = ("torch", *(f"stages.{s}" for s in MODEL_STAGES))
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE.format(WATCH=watch))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]),
        "VIDAL_IMPORT_LOG": str(logs),
    }
    args = [sys.executable, "pipeline/run.py", "--config", "configs/demo.yaml", "--root", str(root)]
    for kv in (
        f"run.stages=[{','.join(MODEL_STAGES)}]",
        "run.ray_address=local",
        "run.num_cpus=2",
        f"run.reuse_workers={str(reuse).lower()}",
    ):
        args += ["--set", kv]
    driver = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _, err = driver.communicate(timeout=400)
    assert driver.returncode == 0, err[-3000:]
    for stage in MODEL_STAGES:  # the work itself: every row exactly once, ok
        rows = [r for p in manifest.part_files(str(root), stage) for r in pq.read_table(p).to_pylist()]
        assert sorted(r["video_id"] for r in rows) == ids and {r["status"] for r in rows} == {"ok"}, stage

    seen = imports_by_process(logs)
    assert seen.pop(driver.pid, None), "the hook did not run in the driver"  # the driver plans every stage
    served = {pid: {s for s in MODEL_STAGES if c[f"stages.{s}"]} for pid, c in seen.items()}
    assert set().union(*served.values()) == set(MODEL_STAGES), served
    with_torch = [pid for pid, c in seen.items() if c["torch"]]
    assert all(seen[pid]["torch"] == 1 for pid in with_torch)
    if not reuse:  # a fresh one-actor pool per stage: one new process per stage, torch imported in each
        assert sorted(len(s) for s in served.values() if s) == [1, 1, 1] and len(with_torch) == 3, served
        return
    # one process served two or more of the model stages: its heavy imports were paid once for them
    assert max(len(s) for s in served.values()) >= 2, served
    # reused workers: at most one per CPU of the instance
    assert 1 <= len(with_torch) <= 2 < len(MODEL_STAGES), seen


def test_a_process_holds_one_model_stage_and_keeps_the_light_ones(tmp_path):
    root = tmp_path / "root"
    make_probe_root(root, n=2, jpeg_size=(64, 48))
    probe = pq.read_table(manifest.part_files(str(root), "probe"))
    overrides = [
        f"run.root={root}",
        "run.demo_media=",
        "clip.motion=false",
        "clip.min_motion=null",
    ]  # clip: short rows pass through
    config = load_config(REPO / "configs" / "demo.yaml", overrides)

    def call(stage: str, context_root: Path = root):
        section = getattr(config, stage)
        context = RunContext(root=str(context_root), stage_config_hash=section_hash(section))
        batch = probe if stage == "clip" else probe.select(["video_id", "frames"])
        out = workers.run_task(batch, stage, section.model_dump(mode="json"), context)
        assert out["status"].to_pylist() == ["ok", "ok"], out["error"].to_pylist()
        return workers._WORKER_STAGES[(stage, context)]

    def held() -> list[str]:
        return sorted(name for name, _ in workers._WORKER_STAGES)

    try:
        depth = call("depth")
        assert call("depth") is depth  # setup() once per process and stage
        gone = [weakref.ref(depth), weakref.ref(depth.net), weakref.ref(depth.net.model)]
        del depth
        infrared = call("infrared")  # the next model stage: the previous one's model is freed first
        assert held() == ["infrared"]
        assert [r() for r in gone] == [None, None, None], "the depth stage's model outlived it"
        gone = [weakref.ref(infrared), weakref.ref(infrared.net)]
        del infrared
        clip = call("clip")  # a light stage after a model stage: the model goes too
        gc.collect()
        assert held() == ["clip"] and [r() for r in gone] == [None, None]
        call("depth")
        assert call("clip") is clip and held() == ["clip", "depth"]  # light instances stay for the run
        # another run root on the same cluster: its own instances, the other run's dropped
        other = call("clip", tmp_path / "other-root")
        assert other is not clip and other.context.root.endswith("other-root") and held() == ["clip"]
    finally:
        workers.release_worker_stages()
    assert not workers._WORKER_STAGES


def _torch_threads(batch: dict) -> dict:
    import torch  # imported in this worker under whichever task came first

    workers.fit_torch_threads()
    return {"pid": [os.getpid()] * len(batch["id"]), "threads": [torch.get_num_threads()] * len(batch["id"])}


def test_a_reused_process_gives_torch_the_threads_of_its_current_task(ray_local):
    import ray

    seen = {}
    for cpus in (1, 2, 1):  # a process that imported torch in a one-CPU task, then serves two-CPU tasks
        rows = (
            ray.data.range(4, override_num_blocks=4)
            .map_batches(_torch_threads, batch_size=1, num_cpus=cpus)
            .take_all()
        )
        assert {r["threads"] for r in rows} == {cpus}, rows
        seen[cpus] = seen.get(cpus, set()) | {r["pid"] for r in rows}
    assert seen[1] & seen[2], "no worker process served both task sizes: the case is not exercised"
