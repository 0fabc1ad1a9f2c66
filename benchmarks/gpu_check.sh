#!/usr/bin/env bash
# The GPU check, in one command on a machine with a CUDA GPU and torch + torchvision (no dvc or mlflow
# needed), from the repository root with data/mnist present (`dvc pull` or `dvc repro download`).
# Written to fit in 5 minutes on one H100 (not yet run on a GPU). Results land in ${OUT:-benchmarks/results}.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
python benchmarks/gpu_check.py
python benchmarks/train_speed.py --device cuda --epochs 10 --skip-mlflow --out "$out/train_speed_gpu.json"
python benchmarks/train_speed.py --device cuda --epochs 10 --skip-mlflow --skip-tutorial --precision bf16 --out "$out/train_speed_gpu_bf16.json"
