#!/usr/bin/env bash
# The GPU check, in one command on a machine with a CUDA GPU and torch + torchvision (no dvc or mlflow
# needed), from the repository root with data/mnist present (`dvc pull` or `dvc repro download`).
# It has run once, on a lent H200: benchmarks/results/gpu_check_h200.log (torch.compile crashed there, a bug
# fixed since; the log predates gpu_check.py's current check names). Results land in ${OUT:-benchmarks/results}.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
# Every part runs even when one fails, so a single call on a lent GPU reports everything; the exit status says
# whether all passed.
status=0
python="${PYTHON:-python3}"  # the GPU image's python3 holds torch; PYTHON=.venv/bin/python elsewhere
"$python" benchmarks/gpu_check.py || status=1
"$python" benchmarks/train_speed.py --device cuda --epochs 10 --skip-mlflow --out "$out/train_speed_gpu.json" || status=1
"$python" benchmarks/train_speed.py --device cuda --epochs 10 --skip-mlflow --skip-tutorial --precision bf16 --out "$out/train_speed_gpu_bf16.json" || status=1
exit $status
