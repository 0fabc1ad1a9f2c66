#!/usr/bin/env bash
# Quick start: create .venv with the pinned dependencies, then run the pipeline (`dvc repro`).
#   ./setup.sh               download MNIST from the official mirrors
#   MNIST_MIRROR=DIR ./setup.sh   use a local copy (a folder or file:// URL) instead
#   ./setup.sh --no-repro    install only (CI does this before the tests)
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "error: Python 3.11 is needed (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
    exit 2
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi
echo "setup: installing the pinned dependencies from requirements.lock (a few minutes the first time)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
# The library itself, editable: predict.py, the benchmarks, the tests and your own code import `mnist_pipeline`
# from src/ as it is. (The lock pins setuptools, which builds it here, with no download.)
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .

if [ "${1:-}" = "--no-repro" ]; then
    exit 0
fi

# dvc.yaml's commands call `python`: make it the one in .venv.
export PATH="$PWD/.venv/bin:$PATH"
dvc repro
echo
echo "Done. Metrics: dvc metrics show. Plots: plots/. Runs: .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db"
