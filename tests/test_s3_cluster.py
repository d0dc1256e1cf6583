"""A multi-node Ray cluster against a real S3 server: the demo pipeline end to end on a head plus a
worker node that declares one GPU, with the model stages' actors placed on that node.

The nodes start before the driver reads its config and without any storage setting in their
environment, so the only way the endpoint can reach their workers is the driver's runtime env
(``store.worker_env``), as on a ``ray up`` cluster. The driver runs in its own process (a Ray driver
per test process would clash with the session's local instance).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from contracts import store
from tests.test_s3_pipeline import CLIPS, STAGES, clip_list, success, tar_keys

REPO = Path(__file__).resolve().parent.parent
MODEL_STAGES = ("caption", "asr", "enhance", "depth", "infrared")

DRIVER = r"""
import json, os, sys
for k in [k for k in os.environ if k == "VIDAL_STORAGE" or k.startswith("AWS_ENDPOINT")]:
    del os.environ[k]
from ray.cluster_utils import Cluster

node = {"num_cpus": 2, "object_store_memory": 150 * 2**20}
cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
gpu_node = cluster.add_node(**node, num_gpus=1)
cluster.wait_for_nodes()

from pipeline.config import load_config
from pipeline.runner import run_pipeline

endpoint, root, inputs = sys.argv[1:4]
gpu = [f"{s}.num_gpus=1" for s in ("caption", "asr", "enhance", "depth", "infrared")]
config = load_config("configs/demo.yaml", [
    f"run.root={root}", f"run.ray_address={cluster.address}", "run.demo_media=", f"discover.inputs=[{inputs}]",
    "shard.samples_per_shard=2", f"run.storage.endpoint={endpoint}", "run.storage.region=us-east-1",
    "run.stages=[discover,download,probe,caption,asr,enhance,depth,infrared,shard]", *gpu])
reports = run_pipeline(config, list(config.run.stages))

# Every actor the run made, alive or dead, from the GCS actor table (the public state API needs the
# dashboard, which this cluster does not start).
import ray._private.state as ray_state
from ray.core.generated import gcs_pb2

ray_state.actors()  # connects the accessor
actors = []
for raw in ray_state.state._global_state_accessor.get_actor_table(None, None):
    a = gcs_pb2.ActorTableData.FromString(raw)
    actors.append({"node": a.address.node_id.hex(), "resources": dict(a.required_resources), "class": a.class_name})
print("RESULT " + json.dumps({"gpu_node": gpu_node.node_id, "head": cluster.head_node.node_id, "actors": actors,
                              "ok": {r.stage: r.counts["ok"] for r in reports}}), flush=True)
import ray
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.slow
def test_demo_pipeline_on_a_two_node_cluster_with_model_actors_on_the_gpu_node(s3_server, tmp_path):
    store.configure(s3_server.storage())
    root = store.join(s3_server.make_bucket("vidal-cluster"), "demo")
    inputs = clip_list(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != store.ENV_VAR and not k.startswith("AWS_ENDPOINT")}
    env.update(HF_HUB_OFFLINE="1", RAY_ADDRESS="")
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, s3_server.endpoint, root, str(inputs)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=580,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert out.returncode == 0 and lines, out.stdout[-3000:] + out.stderr[-6000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["ok"] == {s: CLIPS for s in STAGES}
    on_gpu = [a for a in result["actors"] if a["resources"].get("GPU")]
    assert len(on_gpu) >= len(MODEL_STAGES)  # one pool (of at least one actor) per model stage
    assert {a["node"] for a in on_gpu} == {result["gpu_node"]}
    # the workers of both nodes reached the bucket: every stage's output is there, once
    assert all(success(root, s)["totals"]["ok"] == CLIPS for s in STAGES)
    keys = tar_keys(root)
    assert len(keys) == len(set(keys)) == CLIPS
