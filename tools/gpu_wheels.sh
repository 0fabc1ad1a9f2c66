#!/usr/bin/env bash
# The wheels tools/gpu_check.sh installs on a GPU machine that cannot download: requirements.lock's packages
# for CPython 3.12 on x86-64 Linux, less what the GPU image already holds (torch and its CUDA libraries, NumPy,
# SciPy, pandas, matplotlib, Pillow, pytest...) and what it does not run (Playwright, PostgreSQL's driver). Run here, where pip reaches PyPI; the wheels land in .whl/,
# which git ignores (.git/info/exclude) and the device tool carries (`carry: [".whl", "data/mnist"]`).
#   tools/gpu_wheels.sh        # about 45 MB
set -euo pipefail
cd "$(dirname "$0")/.."
out=.whl
mkdir -p "$out"
grep -qxF "/$out/" .git/info/exclude 2>/dev/null || echo "/$out/" >> .git/info/exclude
python="${PYTHON:-.venv/bin/python}"
# What the GPU image has (its package list, tools/gpu_check.sh's header): installing ours over them would
# replace the versions its torch was built and tested with.
image='playwright|psycopg|psycopg-binary|aiohttp|multidict|yarl|frozenlist|propcache|aiosignal|pygments|rich|protobuf|narwhals|torch|torchvision|triton|nvidia-.*|cuda-.*|numpy|scipy|pandas|pyarrow|scikit-learn|matplotlib|pillow|psutil|pyyaml|pytest|hypothesis|iniconfig|pluggy|packaging|contourpy|cycler|fonttools|kiwisolver|pyparsing|python-dateutil|six|filelock|fsspec|jinja2|markupsafe|networkx|sympy|mpmath|typing-extensions|setuptools|joblib|threadpoolctl'
wanted=$(grep -v '^#' requirements.lock | sed 's/ *;.*//' | grep -Eiv "^($image)==" | grep -v '^antlr4-python3-runtime==')
platforms=()
for tag in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 \
           manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
# shellcheck disable=SC2086  # one word per requirement
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --abi cp312 --abi abi3 --abi none "${platforms[@]}" --platform any -d "$out" $wanted
# No wheel on PyPI (DVC's experiments import hydra, which imports it): built here, pure Python.
"$python" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$out" antlr4-python3-runtime==4.9.3
du -sh "$out"
