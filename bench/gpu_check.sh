#!/usr/bin/env bash
# One prepared GPU check for a lent NVIDIA machine (see bench/RESULTS.md). Writes under $OUT
# (default bench/out/gpu). Each part is bounded so that the whole fits a 15-minute budget.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
run() { local name=$1; shift; echo "== $name"; timeout "${LIMIT:-180}" "$@" 2>&1 | tee "$OUT/$name.log"; }
run depth_gpu_tests "$PY" -m pytest -q tests/test_depth_gpu.py
LIMIT=240 run vision "$PY" bench/bench_vision.py --gpu --sizes 16 64 --out "$OUT/vision"
LIMIT=150 run language "$PY" bench/bench_language.py --gpu
# the training figures read video shards: make small ones (CPU stages only, under a minute) when absent
[ -d runs/demo/shard ] || LIMIT=120 run demo_shards "$PY" -m pipeline.run --config configs/demo.yaml --quiet \
  --set 'run.stages=[discover, download, probe, shard]' --set run.demo_media.per_concept=2
LIMIT=150 run train "$PY" bench/bench_train.py --gpu --out "$OUT/train"
LIMIT=150 run train_ckpt "$PY" bench/bench_train.py --gpu --out "$OUT/train_ckpt" --grad-checkpointing
[ -f bench/bench_model.py ] && LIMIT=120 run model "$PY" bench/bench_model.py --gpu
echo "figures under $OUT"
