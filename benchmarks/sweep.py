"""Parallel sweeps and busy machines: does `dvc queue start -j 2` beat `-j 1`, and how much does other load cost?

In a fresh copy of this repository it measures, in one run on the same machine:

- the wall time of four queued one-epoch experiments of the README's fast
  recipe (benchmarks/recipes.py finds it) under `dvc queue start -j 2`, against
  the same four (other seeds, so that DVC's run cache restores nothing) under
  `-j 1`. Target: at most 0.8x.
- the `train_seconds` the train stage logs for the fast recipe (one epoch, a
  `dvc exp run`) beside one busy single-threaded process, against alone.
  Target: at most 2.2x.
- the same alone with OMP_WAIT_POLICY=PASSIVE against OpenMP's default: what
  passive waiting would cost a training with the machine to itself (the
  pipeline leaves OpenMP's default, since this measured 1.5-2x slower).

Ratios only: absolute times on a shared machine say little.

    .venv/bin/python benchmarks/sweep.py                  # about 8 minutes on 2 quiet cores
    .venv/bin/python benchmarks/sweep.py --update-docs    # and write the figures into docs/performance.md
    .venv/bin/python benchmarks/sweep.py --report --update-docs   # the docs block from the saved JSON

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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import (copy_repository, environment, last_train_seconds, machine, timed,  # noqa: E402
                      update_docs)
from recipes import README, readme_recipes  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULT = REPO_ROOT / "benchmarks" / "results" / "sweep.json"
DOCS = REPO_ROOT / "docs" / "performance.md"
MARK = "<!-- sweep-results -->"
EXPERIMENTS = 4
BUSY = [sys.executable, "-c", "while True: pass"]  # one busy single-threaded process


def fast_recipe() -> list[str]:
    """The README's fast recipe, one epoch: the -S assignments."""
    assignments = [a for a in readme_recipes(README.read_text())["fast"] if not a.startswith("epochs=")]
    return [*assignments, "epochs=1"]


def set_params(assignments: list[str]) -> list[str]:
    return [word for assignment in assignments for word in ("-S", assignment)]


def queue_done(project: Path, env: dict[str, str]) -> bool:
    # nice: polling must not take CPU from the experiments it times.
    status = subprocess.run(["nice", "-n", "19", "dvc", "queue", "status"], cwd=project, env=env,
                            capture_output=True, text=True).stdout
    return not any(word in status for word in ("Queued", "Running"))


def sweep_wall(project: Path, env: dict[str, str], jobs: int, seeds: range) -> float:
    """Queue one experiment per seed, run the queue with `-j jobs`, return the wall seconds until all are done."""
    recipe = fast_recipe()
    for seed in seeds:
        timed(["dvc", "exp", "run", "--queue", *set_params([*recipe, f"seed={seed}"])], project, env)
    started = time.perf_counter()
    timed(["dvc", "queue", "start", "-j", str(jobs)], project, env)
    while not queue_done(project, env):
        time.sleep(2)
    wall = time.perf_counter() - started
    status = subprocess.run(["dvc", "queue", "status"], cwd=project, env=env, capture_output=True, text=True).stdout
    if "Failed" in status:
        sys.exit(f"error: an experiment of the -j {jobs} sweep failed:\n{status}")
    return wall


def train_seconds(project: Path, env: dict[str, str], seed: int, busy: bool = False) -> float:
    """The train stage's own `train_seconds` for the fast recipe, optionally beside a busy process."""
    hog = subprocess.Popen(BUSY) if busy else None
    try:
        timed(["dvc", "exp", "run", *set_params([*fast_recipe(), f"seed={seed}"])], project, env)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    return last_train_seconds(project)


def measure() -> dict:
    with tempfile.TemporaryDirectory(prefix="sweep-") as tmp:
        project = copy_repository(Path(tmp) / "project")
        env = environment()
        # The baseline's own results, committed: queued experiments then rerun only what their params change.
        timed(["dvc", "exp", "run", *set_params([*fast_recipe(), "seed=100"])], project, env)
        timed(["git", "add", "-A"], project, env)
        timed(["git", "commit", "-qm", "baseline results"], project, env)
        one_at_a_time = sweep_wall(project, env, 1, range(1, 1 + EXPERIMENTS))
        two_at_a_time = sweep_wall(project, env, 2, range(11, 11 + EXPERIMENTS))
        alone, beside, passive = [], [], []
        for seed in (21, 22):  # alternated, so that a change of load on the machine hits both
            alone.append(train_seconds(project, env, seed))
            beside.append(train_seconds(project, env, seed + 10, busy=True))
            passive.append(train_seconds(project, environment(OMP_WAIT_POLICY="PASSIVE"), seed + 20))
    return {
        "machine": machine(),
        "recipe": " ".join(f"-S {a}" for a in fast_recipe()),
        "sweep_seconds": {"j1": round(one_at_a_time, 2), "j2": round(two_at_a_time, 2)},
        "train_seconds": {"alone": [round(s, 2) for s in alone], "beside_busy": [round(s, 2) for s in beside],
                          "alone_wait_passive": [round(s, 2) for s in passive]},
    }


def report(summary: dict) -> list[str]:
    sweep, train = summary["sweep_seconds"], summary["train_seconds"]
    alone = statistics.median(train["alone"])
    beside = statistics.median(train["beside_busy"])
    passive = statistics.median(train["alone_wait_passive"])
    return [
        f"{summary['machine']}; {EXPERIMENTS} one-epoch experiments of the fast recipe ({summary['recipe']})",
        f"dvc queue start -j 2 against -j 1: {sweep['j2']:.0f} s / {sweep['j1']:.0f} s = {sweep['j2'] / sweep['j1']:.2f}x "
        "(target <= 0.8x)",
        f"training beside one busy process against alone: {beside:.1f} s / {alone:.1f} s = {beside / alone:.2f}x "
        "(target <= 2.2x; medians of 2)",
        f"alone, OMP_WAIT_POLICY=PASSIVE against OpenMP's default (the pipeline's): {passive:.1f} s / {alone:.1f} s "
        f"= {passive / alone:.2f}x",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--report", action="store_true", help="only print (and with --update-docs write) the saved figures")
    parser.add_argument("--update-docs", action="store_true", help=f"write the figures into {DOCS.relative_to(REPO_ROOT)}")
    args = parser.parse_args()
    if args.report:
        summary = json.loads(args.out.read_text())
    else:
        summary = measure()
        summary["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                                           capture_output=True, text=True).stdout.strip()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    lines = report(summary)
    print("\n".join(lines))
    if args.update_docs:
        update_docs(lines, MARK)


if __name__ == "__main__":
    main()
