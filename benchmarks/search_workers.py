"""Searches, measured: eight one-epoch trials by one worker and by two, and a TPE search against a grid.

In fresh copies of this repository (each with its own DVC cache, so that no trial is restored
from another's run cache), in one run on the same machine:

- the wall time of `python search.py` running the same eight trials (a grid of four learning
  rates by two momenta) with one worker, and with two workers side by side in one clone (four
  trials each). Target: two workers at most 0.7x the wall time of one.
- the best validation accuracy that eight trials of the default sampler (TPE, over the same
  ranges) find, against the grid's best: the same budget, two ways to spend it.

Each trial trains one epoch with the default params on the training split less the 5000 images held
out, and scores on those.

    .venv/bin/python benchmarks/search_workers.py                  # about 7 minutes on 2 cores
    .venv/bin/python benchmarks/search_workers.py --update-docs    # and write the figures into docs/search.md
    .venv/bin/python benchmarks/search_workers.py --report --update-docs

Writes benchmarks/results/search.json. Needs the MNIST files: MNIST_MIRROR, or ../shared/data/mnist.
A benchmark, not a test: no timing here is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, RESULTS, code_version, copy_repository, environment, machine, publish

RESULT = RESULTS / "search.json"
DOC = REPO_ROOT / "docs" / "search.md"
MARK = "<!-- search-results -->"
LRS, MOMENTA = (0.003, 0.01, 0.03, 0.1), (0.5, 0.9)
GRID = f"lr: {{grid: {list(LRS)}}}\nmomentum: {{grid: {list(MOMENTA)}}}\n"
RANGES = (
    f"lr: {{low: {min(LRS)}, high: {max(LRS)}, log: true}}\nmomentum: {{low: {min(MOMENTA)}, high: {max(MOMENTA)}}}\n"
)
TRIALS = len(LRS) * len(MOMENTA)
FIXED = ["-S", "epochs=1"]


def workers(project: Path, study: str, space: str, count: int, seed: int | None = None) -> float:
    """Wall seconds of `count` workers of one study running TRIALS trials between them, side by side."""
    (project / "search.yaml").write_text(space)
    each = TRIALS // count
    command = [sys.executable, "search.py", "--study", study, "--trials", str(each), *FIXED]
    command += ["--seed", str(seed)] if seed is not None else []
    started = time.perf_counter()
    running = [
        subprocess.Popen(
            command, cwd=project, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(count)
    ]
    outputs = [process.communicate()[0] for process in running]
    wall = time.perf_counter() - started
    if any(process.returncode for process in running):
        sys.exit("error: a worker failed:\n" + "\n".join(output[-2000:] for output in outputs))
    return wall


def best(project: Path, study: str) -> dict:
    """The study's best trial: its validation accuracy, test accuracy and params (read from Optuna's storage)."""
    import optuna

    found = optuna.load_study(study_name=study, storage=f"sqlite:///{project / 'search.db'}")
    trials = [t for t in found.trials if t.state == optuna.trial.TrialState.COMPLETE]
    top = found.best_trial
    return {
        "trials": len(trials),
        "val_accuracy": top.value,
        "test_accuracy": top.user_attrs.get("test_accuracy"),
        "params": top.params,
    }


def measure() -> dict:
    with tempfile.TemporaryDirectory(prefix="search-bench-") as tmp:
        projects = {name: copy_repository(Path(tmp) / name) for name in ("one", "two", "tpe")}
        for project in projects.values():  # the data, once per copy, before any clock starts
            subprocess.run(
                ["dvc", "repro", "download"], cwd=project, env=environment(), check=True, capture_output=True
            )
        one = workers(projects["one"], "grid", GRID, 1)
        two = workers(projects["two"], "grid", GRID, 2)
        tpe = workers(projects["tpe"], "tpe", RANGES, 1, seed=1)
        return {
            "machine": machine(),
            "trials": TRIALS,
            "fixed": " ".join(FIXED),
            "wall_seconds": {
                "one_worker": round(one, 1),
                "two_workers": round(two, 1),
                "tpe_one_worker": round(tpe, 1),
            },
            "grid": best(projects["one"], "grid"),
            "grid_two_workers": best(projects["two"], "grid"),
            "tpe": best(projects["tpe"], "tpe"),
        }


def report(summary: dict) -> list[str]:
    wall, grid, tpe = summary["wall_seconds"], summary["grid"], summary["tpe"]
    params = lambda trial: ", ".join(f"{k}={v:.4g}" for k, v in sorted(trial["params"].items()))  # noqa: E731
    return [
        f"{summary['machine']}; {summary['trials']} trials of one epoch each ({summary['fixed']}), 5000 images held out",
        f"two workers against one, the same {summary['trials']} grid trials: {wall['two_workers']:.0f} s / "
        f"{wall['one_worker']:.0f} s = {wall['two_workers'] / wall['one_worker']:.2f}x (target <= 0.7x)",
        f"grid ({len(LRS)} learning rates x {len(MOMENTA)} momenta): best validation accuracy {grid['val_accuracy']:.4f} "
        f"(test {grid['test_accuracy']:.4f}) at {params(grid)}",
        f"TPE over the same ranges, {summary['trials']} trials: best validation accuracy {tpe['val_accuracy']:.4f} "
        f"(test {tpe['test_accuracy']:.4f}) at {params(tpe)}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument(
        "--report", action="store_true", help="only print (and with --update-docs write) the saved figures"
    )
    parser.add_argument("--update-docs", action="store_true", help="write the figures into docs/search.md")
    args = parser.parse_args()
    summary = json.loads(args.out.read_text()) if args.report else {**measure(), **code_version()}
    publish(summary, args.out, report(summary), MARK, save=not args.report, update_docs=args.update_docs, doc=DOC)


if __name__ == "__main__":
    main()
