#!/usr/bin/env bash
# The prepared GPU check (bench/gpu_check.py has the details):
#   bash bench/gpu_check.sh          on a CUDA machine, after `make install`: the CUDA paths for real (<= 8 min)
#   bash bench/gpu_check.sh --dry    anywhere: tiny sizes on the CPU, CUDA-only steps reported as skipped
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
exec "$PY" bench/gpu_check.py "$@"
