"""What Ray workers get from the driver: storage settings always, Hugging Face settings only when set."""

import subprocess
import sys
import textwrap

from contracts.worker_env import HF_VARS, worker_env


def test_hf_variables_travel_only_when_the_driver_sets_them(monkeypatch):
    for k in HF_VARS:
        monkeypatch.delenv(k, raising=False)
    env = worker_env()
    assert not set(env) & set(HF_VARS)  # never forced: an online driver keeps online workers
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("HF_HOME", "/data/hf")
    env = worker_env()
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_TOKEN"] == "hf_secret" and env["HF_HOME"] == "/data/hf"
    assert "VIDAL_STORAGE" in env


def test_a_ray_worker_sees_the_drivers_settings(tmp_path):
    import tempfile

    ray_dir = tempfile.mkdtemp(prefix="r", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    # A fresh driver (its own Ray instance) whose workers are started with runtime_env=worker_env():
    # a task on a worker reads the variables back.
    code = textwrap.dedent(
        """
        import os, ray
        from pipeline.runner import init_ray
        init_ray("local", num_cpus=1)
        @ray.remote
        def read():
            return {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_HOME")}
        print(ray.get(read.remote()))
        ray.shutdown()
        """
    )
    base = {k: v for k, v in __import__("os").environ.items() if not k.startswith("HF_")}
    env = {**base, "HF_TOKEN": "hf_abc", "HF_HOME": str(tmp_path / "hf"), "RAY_TMPDIR": ray_dir}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = eval(out.stdout.strip().splitlines()[-1])  # the dict the worker printed
    assert seen == {"HF_HUB_OFFLINE": None, "HF_TOKEN": "hf_abc", "HF_HOME": str(tmp_path / "hf")}
