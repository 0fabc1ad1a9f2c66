#!/usr/bin/env bash
# The GPU check, in one command on a machine with a CUDA GPU, from the repository root, with data/mnist present.
# On a lent GPU machine, which has torch but no DVC or MLflow and cannot download: run tools/gpu_wheels.sh
# here first (the wheels land in .whl/), then carry both: `run(command="tools/gpu_check.sh", carry=[".whl",
# "data/mnist"], timeout_s=600)`. Elsewhere PYTHON=.venv/bin/python and no .whl. Results land in ${OUT:-benchmarks/results}.
#
# What it checks, each line PASS or FAIL, every part run even when one fails (the exit status says whether all passed):
# 1. the training core on the GPU (tools/gpu_check.py: the loss as the CPU's, bf16, augmentation, compile,
#    the fast recipe, determinism);
# 2. the whole pipeline with the default params, `dvc repro` and then `dvc repro -f`: the same bytes twice
#    (deterministic: true by default), and what determinism costs (one run with deterministic: false);
# 3. the champion loads and answers on a GPU machine: the README's mlflow.pyfunc snippet, predict.py,
#    predict.py --serve's POST /predict and `mlflow models serve`;
# 4. the tests that could assume a device, on this machine;
# 5. the speed of both loops there (benchmarks/train_speed.py).
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
log="$out/gpu_check.log"
: > "$log"
python="${PYTHON:-python3}"  # the GPU image's python3 holds torch
status=0
say() { echo "$*" | tee -a "$log"; }
check() {  # name, command...: PASS or FAIL, and the command's output in the log
    local name=$1; shift
    if "$@" >> "$log" 2>&1; then say "PASS $name"; else say "FAIL $name (see $log)"; status=1; fi
}

if [ -d .whl ]; then
    # Into the image's own environment, not a --target folder: dvc.yaml's PYTHONPATH=src replaces PYTHONPATH.
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl >> "$log" 2>&1 \
        || { say "FAIL installing the wheels of .whl/"; exit 1; }
fi
# dvc.yaml's commands call `python`: the interpreter above, first on PATH with its scripts (dvc, mlflow).
bin=$(mktemp -d)
ln -s "$(command -v "$python")" "$bin/python"
export PATH="$bin:$(dirname "$(command -v "$python")"):$PATH"
export MNIST_MIRROR="$repo/data/mnist" DVC_NO_ANALYTICS=1 PYTHONUNBUFFERED=1
export GIT_AUTHOR_NAME=gpu-check GIT_AUTHOR_EMAIL=gpu-check@example.invalid GIT_COMMITTER_NAME=gpu-check \
       GIT_COMMITTER_EMAIL=gpu-check@example.invalid
say "$("$python" -c 'import torch; print(torch.cuda.get_device_name(), "torch", torch.__version__)')"

# 1. The training core.
"$python" tools/gpu_check.py 2>&1 | tee -a "$log" || status=1

# 2. The pipeline, in a copy of the repository as a clone has it.
work=$(mktemp -d)
"$python" -c "import sys; sys.path.insert(0, 'benchmarks'); from common import copy_repository; \
from pathlib import Path; copy_repository(Path('$work/repo'))" >> "$log" 2>&1 || { say "FAIL copying the repository"; exit 1; }
cd "$work/repo"
outs() { "$python" -c "import yaml; s = yaml.safe_load(open('dvc.lock'))['stages']; \
print('\n'.join(f\"{o['path']} {o['md5']}\" for st in s.values() for o in st.get('outs', [])))"; }
check "dvc repro, default params (deterministic: true)" dvc repro
outs > "$work/first.txt"
cp -r metrics "$work/first-metrics"
check "dvc repro -f, the same params again" dvc repro -f
outs > "$work/second.txt"
check "two default runs on this GPU: the same output hashes in dvc.lock" diff "$work/first.txt" "$work/second.txt"
check "and the same metrics/ files but the run id" diff -r -x mlflow_run.json -x eval_run.json "$work/first-metrics" metrics
check "dvc exp run -S deterministic=false (the faster kernels)" dvc exp run --temp -n fast-kernels -S deterministic=false
"$python" - >> "$log" 2>&1 <<'PY'
# What determinism costs: train_seconds of the three runs above, read from the MLflow store.
import sqlite3
rows = sqlite3.connect("mlflow.db").execute(
    "SELECT r.name, m.value FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid WHERE m.key = 'train_seconds' "
    "ORDER BY r.start_time").fetchall()
print("TIME train_seconds by run (the last: deterministic: false):", [(name, round(value, 2)) for name, value in rows])
PY
grep "^TIME" "$log" | tail -1

# 3. The champion, as a user loads it, on a machine where torch sees a GPU.
"$python" - > "$work/digit.txt" 2>> "$log" <<'PY'
import gzip, numpy as np
from PIL import Image
raw = np.frombuffer(gzip.decompress(open("data/mnist/t10k-images-idx3-ubyte.gz", "rb").read()), np.uint8, offset=16)
labels = np.frombuffer(gzip.decompress(open("data/mnist/t10k-labels-idx1-ubyte.gz", "rb").read()), np.uint8, offset=8)
Image.fromarray(raw[:784].reshape(28, 28)).save("digit.png")
print(labels[0])
PY
digit=$(cat "$work/digit.txt")
check "the README's snippet: mlflow.pyfunc.load_model('models:/mnist-cnn@champion') predicts" "$python" -c "
import mlflow, numpy as np, torch
assert torch.cuda.is_available()
mlflow.set_tracking_uri('sqlite:///mlflow.db')
model = mlflow.pyfunc.load_model('models:/mnist-cnn@champion')
from PIL import Image
pixels = np.asarray(Image.open('digit.png'), np.float32)[None, None]
digit = int(model.predict(pixels).argmax(axis=1)[0]); print('digit', digit); assert digit == $digit"
check "predict.py digit.png with the champion" bash -c "python predict.py digit.png | tee /dev/stderr | grep -q 'digit.png: $digit '"
serve_check() {  # command...: start a server, POST the digit, stop it
    local port=$1 path=$2; shift 2
    "$@" & local pid=$!
    local ok=1
    for _ in $(seq 60); do
        sleep 1
        if [ "$path" = /predict ]; then
            answer=$(curl -s -F "image=@digit.png;type=image/png" "http://127.0.0.1:$port/predict") && ok=0 && break
        else
            answer=$(curl -s -H 'Content-Type: application/json' \
                -d "{\"inputs\": $("$python" -c "import numpy as np; from PIL import Image; print(np.asarray(Image.open('digit.png'), np.float32)[None, None].tolist())")}" \
                "http://127.0.0.1:$port/invocations") && ok=0 && break
        fi
    done
    kill "$pid" 2> /dev/null; wait "$pid" 2> /dev/null
    echo "$answer"
    [ $ok = 0 ] && echo "$answer" | "$python" -c "import json, sys, numpy as np; a = json.load(sys.stdin); \
d = a['digit'] if 'digit' in a else int(np.argmax(a['predictions'][0])); print('digit', d); assert d == $digit"
}
check "predict.py --serve: POST /predict answered by the champion" serve_check 8000 /predict python predict.py --serve
check "mlflow models serve: POST /invocations" serve_check 5055 /invocations \
    mlflow models serve -m models:/mnist-cnn@champion --env-manager local --port 5055
cd "$repo"

# 4. The tests that could assume a device (the end-to-end ones train on the CPU, as on any machine).
check "tests that touch the device or the model's loading" "$python" -m pytest -q -p no:cacheprovider \
    tests/test_kernels.py tests/test_device.py tests/test_training.py tests/test_checkpoint.py tests/test_runs.py \
    tests/test_pipeline_e2e.py

# 5. Speed.
"$python" benchmarks/train_speed.py --device cuda --epochs 10 --out "$out/train_speed_gpu.json" 2>&1 | tail -8 | tee -a "$log" \
    || status=1
say "$(grep -c '^PASS' "$log") passed, $(grep -c '^FAIL' "$log") failed"
exit $status
