#!/usr/bin/env bash
# ResNet50 training throughput on a CUDA GPU (bf16, channels_last, torch.compile off/on; synthetic GPU-resident
# data and the real input pipeline) plus MFU. Bounded to 8 minutes. Usage: bench/gpu.sh [--json] [--batch-size N]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 480 "$PY" bench/gpu_throughput.py "$@"
