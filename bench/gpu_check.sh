#!/usr/bin/env bash
# `nnxp selftest --device cuda` first, then GPU tests, CPU/CUDA parity and GPU benchmarks in one go; see
# bench/gpu_check.py for what it writes.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python bench/gpu_check.py "$@"
