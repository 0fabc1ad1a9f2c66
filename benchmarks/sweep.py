"""Parallel sweeps and busy machines: does `dvc queue start -j 2` beat `-j 1`, what does other load cost,
and is a lone training as fast as before the shards?

In fresh copies of this repository it measures, in one run on the same machine:

- the wall time of four queued one-epoch experiments with the default params under
  `dvc queue start -j 2`, against four others (other seeds, so that DVC's run cache restores
  nothing) under `-j 1`. Target: at most 0.8x.
- the `train_seconds` the train stage logs for a one-epoch `dvc exp run` beside one busy
  single-threaded process, against alone. Target: at most 2.2x.
- the same lone training with a baseline commit's code (`--baseline`, before the shards), taking
  turns with the working tree's, for the default params and for the README's fast recipe.
  Target: no slower.

Ratios only: absolute times on a shared machine say little.

    .venv/bin/python benchmarks/sweep.py --baseline dd4c82d                 # about 10 minutes on 2 quiet cores
    .venv/bin/python benchmarks/sweep.py --baseline dd4c82d --update-docs   # and write the figures into docs/performance.md
    .venv/bin/python benchmarks/sweep.py --report --update-docs             # the docs block from the saved JSON

Writes benchmarks/results/sweep.json. Needs the MNIST files: MNIST_MIRROR, or ../shared/data/mnist.
A benchmark, not a test: no timing here is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, code_version, copy_repository, environment, last_train_seconds, machine, publish, timed
from recipes import README, readme_recipes

RESULT = RESULTS / "sweep.json"
MARK = "<!-- sweep-results -->"
EXPERIMENTS = 4
PAIRS = 3  # lone trainings of each tree, taking turns
BUSY = [sys.executable, "-c", "while True: pass"]  # one busy single-threaded process


def workloads() -> dict[str, list[str]]:
    """The -S assignments of a one-epoch training: the default params, and the README's fast recipe."""
    fast = [a for a in readme_recipes(README.read_text())["fast"] if not a.startswith("epochs=")]
    return {"default params": ["epochs=1"], "fast recipe": [*fast, "epochs=1"]}


def set_params(assignments: list[str]) -> list[str]:
    return [word for assignment in assignments for word in ("-S", assignment)]


def queue_done(project: Path, env: dict[str, str]) -> bool:
    # nice: polling must not take CPU from the experiments it times.
    status = subprocess.run(
        ["nice", "-n", "19", "dvc", "queue", "status"], cwd=project, env=env, capture_output=True, text=True
    ).stdout
    return not any(word in status for word in ("Queued", "Running"))


def sweep_wall(project: Path, env: dict[str, str], jobs: int, seeds: range) -> float:
    """Queue one one-epoch experiment per seed, run the queue with `-j jobs`, return the wall seconds until all are done."""
    for seed in seeds:
        timed(["dvc", "exp", "run", "--queue", *set_params(["epochs=1", f"seed={seed}"])], project, env)
    started = time.perf_counter()
    timed(["dvc", "queue", "start", "-j", str(jobs)], project, env)
    while not queue_done(project, env):
        time.sleep(2)
    wall = time.perf_counter() - started
    status = subprocess.run(["dvc", "queue", "status"], cwd=project, env=env, capture_output=True, text=True).stdout
    if "Failed" in status:
        sys.exit(f"error: an experiment of the -j {jobs} sweep failed:\n{status}")
    return wall


def train_seconds(project: Path, env: dict[str, str], assignments: list[str], seed: int, busy: bool = False) -> float:
    """The train stage's own `train_seconds` for a one-epoch `dvc exp run`, optionally beside a busy process."""
    hog = subprocess.Popen(BUSY) if busy else None
    try:
        timed(["dvc", "exp", "run", *set_params([*assignments, f"seed={seed}"])], project, env)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    return last_train_seconds(project)


def measure(baseline: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="sweep-") as tmp:
        env = environment()
        project = copy_repository(Path(tmp) / "project")
        before = copy_repository(Path(tmp) / "baseline", baseline)
        for tree in (project, before):
            # The trees' own results, committed: experiments then rerun only what their params change.
            timed(["dvc", "exp", "run", *set_params(["epochs=1", "seed=100"])], tree, env)
            timed(["git", "add", "-A"], tree, env)
            timed(["git", "commit", "-qm", "baseline results"], tree, env)
        one_at_a_time = sweep_wall(project, env, 1, range(1, 1 + EXPERIMENTS))
        two_at_a_time = sweep_wall(project, env, 2, range(11, 11 + EXPERIMENTS))
        default = workloads()["default params"]
        alone, beside = [], []
        for seed in (21, 22):  # alternated, so that a change of load on the machine hits both
            alone.append(train_seconds(project, env, default, seed))
            beside.append(train_seconds(project, env, default, seed + 10, busy=True))
        lone: dict[str, dict[str, list[float]]] = {}
        for name, assignments in workloads().items():
            lone[name] = {"working tree": [], f"baseline {baseline}": []}
            for seed in range(41, 41 + PAIRS):
                lone[name]["working tree"].append(round(train_seconds(project, env, assignments, seed), 2))
                lone[name][f"baseline {baseline}"].append(round(train_seconds(before, env, assignments, seed), 2))
    return {
        "machine": machine(),
        "baseline": baseline,
        "sweep_seconds": {"j1": round(one_at_a_time, 2), "j2": round(two_at_a_time, 2)},
        "train_seconds": {"alone": [round(s, 2) for s in alone], "beside_busy": [round(s, 2) for s in beside]},
        "lone_train_seconds": lone,
    }


def report(summary: dict) -> list[str]:
    sweep, train = summary["sweep_seconds"], summary["train_seconds"]
    alone, beside = statistics.median(train["alone"]), statistics.median(train["beside_busy"])
    lines = [
        f"{summary['machine']}; one-epoch trainings (-S epochs=1) of the default params unless said",
        f"{EXPERIMENTS} queued experiments, dvc queue start -j 2 against -j 1: "
        f"{sweep['j2']:.0f} s / {sweep['j1']:.0f} s = {sweep['j2'] / sweep['j1']:.2f}x (target <= 0.8x)",
        f"training beside one busy process against alone: {beside:.1f} s / {alone:.1f} s = {beside / alone:.2f}x "
        "(target <= 2.2x; medians of 2)",
    ]
    for name, trees in summary["lone_train_seconds"].items():
        (now, now_seconds), (then, then_seconds) = trees.items()
        ratio = statistics.median(now_seconds) / statistics.median(then_seconds)
        lines.append(
            f"lone training, {name}, {now} against {then}: {statistics.median(now_seconds):.2f} s / "
            f"{statistics.median(then_seconds):.2f} s = {ratio:.2f}x (target <= 1.0x; medians of "
            f"{len(now_seconds)}, taking turns)"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", metavar="COMMIT", help="the commit whose lone training is the 'before'")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument(
        "--report", action="store_true", help="only print (and with --update-docs write) the saved figures"
    )
    parser.add_argument("--update-docs", action="store_true", help="write the figures into docs/performance.md")
    args = parser.parse_args()
    if not args.report and not args.baseline:
        parser.error("--baseline COMMIT is needed to measure (or --report)")
    summary = json.loads(args.out.read_text()) if args.report else {**measure(args.baseline), **code_version()}
    publish(summary, args.out, report(summary), MARK, save=not args.report, update_docs=args.update_docs)


if __name__ == "__main__":
    main()
