"""The certificate, checked on this machine: does anything but params, code and data move a committed result?

In a fresh copy of this repository (its files as a clone would have them), it runs the whole pipeline with
the default params, `dvc repro -f`, once as a user would and once under each of these:

- the lowest instruction sets: torch's kernels capped at their baseline (ATEN_CPU_CAPABILITY=default,
  ONEDNN_MAX_CPU_ISA=SSE41, MKL_CBWR=COMPATIBLE) and the project's kernels built for plain x86-64
  (MNIST_PIPELINE_KERNEL_TARGET=x86-64: SSE2, no AVX);
- one thread (`threads: 1`);
- an empty kernel cache (XDG_CACHE_HOME), so the kernels are built anew;
- a busy process on every core beside it.

Each run must give the output hashes of the committed dvc.lock and leave `git status` showing nothing but
metrics/mlflow_run.json (the run id). A check, not a benchmark: it exits 1 when a run differs.

    .venv/bin/python tools/bits_check.py      # about 8 minutes on 2 cores

Writes benchmarks/results/bits_check.json. Needs the MNIST files: MNIST_MIRROR, or ../shared/data/mnist.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # what the benchmarks share
from common import RESULTS, code_version, copy_repository, environment, machine, timed

RESULT = RESULTS / "bits_check.json"
BUSY = [sys.executable, "-c", "while True: pass"]
LOWEST = {
    "ATEN_CPU_CAPABILITY": "default",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "MKL_CBWR": "COMPATIBLE",
    "MNIST_PIPELINE_KERNEL_TARGET": "x86-64",
}
RUN_ID_FILE = "metrics/mlflow_run.json"  # the one file a run may change: the id of its MLflow run


def outs(lock_text: str) -> dict[str, str]:
    """Every output hash in a dvc.lock, by path."""
    stages = yaml.safe_load(lock_text)["stages"]
    return {out["path"]: out["md5"] for stage in stages.values() for out in stage.get("outs", [])}


def changed_files(project: Path) -> list[str]:
    """What `git status` shows as changed, but the run id."""
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=project, capture_output=True, text=True, check=True
    ).stdout
    return sorted(line[3:] for line in status.splitlines() if line[3:] != RUN_ID_FILE)


def set_threads(project: Path, threads) -> None:
    params = project / "params.yaml"
    text = params.read_text()
    params.write_text(
        text.replace("threads: auto ", f"threads: {threads} ", 1)
        if threads != "auto"
        else text.replace("threads: 1 ", "threads: auto ", 1)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    committed = outs(
        Path("dvc.lock").read_text()
        if Path("dvc.lock").exists()
        else (Path(__file__).parents[1] / "dvc.lock").read_text()
    )
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        project = copy_repository(Path(tmp) / "repo")
        cache = Path(tmp) / "cache"
        variants = [
            ("as a user runs it", {}, "auto", False),
            ("lowest instruction sets", LOWEST, "auto", False),
            ("one thread", {}, 1, False),
            ("empty kernel cache", {"XDG_CACHE_HOME": str(cache)}, "auto", False),
            ("beside a busy process on every core", {}, "auto", True),
        ]
        for name, extra, threads, busy in variants:
            set_threads(project, threads)
            hogs = [subprocess.Popen(BUSY) for _ in range(os.cpu_count() or 1)] if busy else []
            try:
                seconds = timed(["dvc", "repro", "-f"], project, environment(**extra))
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
            set_threads(project, "auto")
            got = outs((project / "dvc.lock").read_text())
            differ = sorted(path for path in committed if got.get(path) != committed[path])
            changed = changed_files(project)
            same = not differ and not changed
            results.append(
                {
                    "variant": name,
                    "environment": extra,
                    "threads": threads,
                    "busy": busy,
                    "seconds": round(seconds, 1),
                    "same_bytes_as_committed": same,
                    "outputs_that_differ": differ,
                    "files_git_shows_changed": changed,
                    "outs": got,
                }
            )
            print(
                f"{'SAME' if same else 'DIFFERENT'} {name}: {len(committed) - len(differ)} of {len(committed)} "
                f"output hashes as committed, git shows {changed or 'nothing'} changed but the run id "
                f"({seconds:.0f} s)",
                flush=True,
            )
    summary = {
        "machine": machine(),
        "code": code_version(),
        "committed_outs": committed,
        "runs": results,
        "all_same": all(r["same_bytes_as_committed"] for r in results),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'every run gave' if summary['all_same'] else 'NOT every run gave'} the committed bytes; wrote {args.out}")
    sys.exit(0 if summary["all_same"] else 1)


if __name__ == "__main__":
    main()
