#!/usr/bin/env bash
# The one prepared GPU benchmark (bench/gpu_bench.py): no network, about 6-8 minutes on one H200.
#   bash bench/run_gpu.sh                  # sdxl-random (full SDXL, random weights, built locally)
#   bash bench/run_gpu.sh --model juggernaut   # a models.yaml entry (its weights already in HF_HOME)
#   bash bench/run_gpu.sh --smoke          # the same code on the CPU with tiny, in seconds (CI)
# Needs the project's venv (.venv) and a Redis at REDIS_URL / 127.0.0.1:6379: one is started here
# (no persistence) when none answers and redis-server is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if ! "$PY" -c "import redis, sys; redis.Redis.from_url('${REDIS_URL:-redis://127.0.0.1:6379/0}').ping()" 2>/dev/null; then
  redis-server --port 6379 --save '' --appendonly no --daemonize yes >/dev/null
  for _ in $(seq 50); do "$PY" -c "import redis; redis.Redis().ping()" 2>/dev/null && break; sleep 0.1; done
fi
exec "$PY" bench/gpu_bench.py "$@"
