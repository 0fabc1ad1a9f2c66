"""The fixed costs of a quick experiment: what `dvc exp run` pays besides training, and where it goes.

In a fresh copy of this repository (its files as a clone would have them, the
working tree's versions), it runs a warm-up experiment, then times one-epoch
experiments exactly as a user types them:

    dvc exp run -S lr=0.05 -S epochs=1

The fixed cost is the command's wall time minus the `train_seconds` the run
logs to MLflow. Its unit U is the wall time of `python -c "import torch, mlflow"`
in the same venv, measured in the same run, so the figure holds on a faster or
slower machine. Each stage reports its phases (MNIST_PIPELINE_TIMINGS, see
mnist_pipeline.timing); what the stages do not account for is DVC itself (and each stage process's exit after its last mark).

    .venv/bin/python benchmarks/overhead.py                   # about 3 minutes on 2 cores
    .venv/bin/python benchmarks/overhead.py --baseline d819703  # and an earlier commit's, interleaved, for a before/after
    .venv/bin/python benchmarks/overhead.py --update-docs     # and write the figures into docs/performance.md
    .venv/bin/python benchmarks/overhead.py --report --update-docs   # the docs block from the saved JSON

Writes benchmarks/results/overhead.json. Needs the MNIST files: MNIST_MIRROR, or ../shared/data/mnist.
A benchmark, not a test: no timing here is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from common import (
    REPO_ROOT,
    RESULTS,
    code_version,
    copy_repository,
    environment,
    last_train_seconds,
    machine,
    publish,
    timed,
)

RESULT = RESULTS / "overhead.json"
MARK = "<!-- overhead-results -->"
WARM_UP = ("lr=0.02", "epochs=1")
YAML_C_PARSER = "ruamel.yaml.clib"
MEASURED = ("lr=0.05", "lr=0.03", "lr=0.04", "lr=0.06", "lr=0.07")  # each with epochs=1; a new value each time


def unit_seconds(env: dict[str, str], repeats: int = 3) -> float:
    """U: the median wall time of `python -c "import torch, mlflow"`."""
    return statistics.median(
        timed([sys.executable, "-c", "import torch, mlflow"], REPO_ROOT, env) for _ in range(repeats)
    )


def stage_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def yaml_parser(project: Path) -> str:
    """ "C" when the tree's requirements.lock installs ruamel.yaml.clib (DVC's YAML reads in C), else "pure-Python"."""
    lock = project / "requirements.lock"
    pins = lock.read_text().splitlines() if lock.exists() else []
    return "C" if any(line.startswith(YAML_C_PARSER + "==") for line in pins) else "pure-Python"


def tree_environment(env: dict[str, str], parser: str, stubs: Path) -> dict[str, str]:
    """`env`, and for a tree without ruamel.yaml.clib a stub module that hides the venv's C parser from DVC.

    ruamel.yaml falls back to its pure-Python parser when `import _ruamel_yaml` fails, so an older
    commit is timed with the YAML reads it installed. The stages set their own PYTHONPATH.
    """
    if parser == "C":
        return env
    stubs.mkdir(exist_ok=True)
    (stubs / "_ruamel_yaml.py").write_text('raise ImportError("hidden by benchmarks/overhead.py")\n')
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(stubs), env.get("PYTHONPATH")]))}


def measure(repeats: int, baseline: str | None = None) -> dict:
    """Time the experiments of the working tree's code, and with `baseline` of that commit's, taking turns."""
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        timings = Path(tmp) / "timings.jsonl"
        env = environment(MNIST_PIPELINE_TIMINGS=str(timings))
        trees = {"working tree": None, **({f"baseline {baseline}": baseline} if baseline else {})}
        projects = {
            name: copy_repository(Path(tmp) / f"project{i}", revision)
            for i, (name, revision) in enumerate(trees.items())
        }
        parsers = {name: yaml_parser(project) for name, project in projects.items()}
        envs = {name: tree_environment(env, parsers[name], Path(tmp) / "stubs") for name in projects}
        unit = unit_seconds(env)
        warm_up = {
            name: round(timed(["dvc", "exp", "run", *sum((["-S", s] for s in WARM_UP), [])], project, envs[name]), 3)
            for name, project in projects.items()
        }
        experiments: dict[str, list[dict]] = {name: [] for name in projects}
        for value in MEASURED[:repeats]:
            for name, project in projects.items():  # taking turns, so that the machine's drift hits both alike
                timings.unlink(missing_ok=True)
                wall = timed(["dvc", "exp", "run", "-S", value, "-S", "epochs=1"], project, envs[name])
                experiments[name].append(
                    {
                        "command": f"dvc exp run -S {value} -S epochs=1",
                        "wall": round(wall, 3),
                        "train_seconds": round(last_train_seconds(project), 3),
                        "stages": stage_records(timings),
                    }
                )
        noop = {
            name: [round(timed(["dvc", "repro"], project, envs[name]), 3) for _ in range(3)]
            for name, project in projects.items()
        }
        unit_after = unit_seconds(env)
    return {
        "machine": machine(),
        "unit_seconds": round(statistics.median([unit, unit_after]), 3),
        "unit_seconds_before_after": [round(unit, 3), round(unit_after, 3)],
        "trees": {
            name: {
                "yaml_parser": parsers[name],
                "warm_up_seconds": warm_up[name],
                "experiments": experiments[name],
                "noop_repro_seconds": noop[name],
            }
            for name in projects
        },
    }


def report(summary: dict) -> list[str]:
    """The figures as text lines: per tree, each experiment, then the median experiment's stages and phases."""
    unit = summary["unit_seconds"]
    before, after = summary["unit_seconds_before_after"]
    lines = [
        f"{summary['machine']}; commit {summary.get('commit', '?')} ({summary.get('working_tree', '?')})",
        f'U = {unit:.2f} s (python -c "import torch, mlflow", median; {before:.2f} s before and {after:.2f} s after)',
    ]
    for name, tree in summary["trees"].items():
        experiments = tree["experiments"]
        fixed = statistics.median(e["wall"] - e["train_seconds"] for e in experiments)
        lines.append("")
        parser = f", DVC's YAML reads in {tree['yaml_parser']}" if "yaml_parser" in tree else ""
        lines.append(f"{name}: fixed cost {fixed:.1f} s = {fixed / unit:.2f} U (median of {len(experiments)}{parser})")
        for e in experiments:
            cost = e["wall"] - e["train_seconds"]
            lines.append(
                f"  {e['command']}: {e['wall']:.1f} s wall, {e['train_seconds']:.1f} s training, "
                f"fixed {cost:.1f} s = {cost / unit:.2f} U"
            )
        middle = sorted(experiments, key=lambda e: e["wall"] - e["train_seconds"])[len(experiments) // 2]
        stage_total = 0.0
        for record in middle["stages"]:
            stage_total += record["total"]
            phases = ", ".join(f"{phase} {seconds:.2f}" for phase, seconds in record["phases"].items())
            lines.append(f"    {record['stage']:<9} {record['total']:5.2f} s: {phases}")
        lines.append(
            f"    DVC itself and the stages' exits {middle['wall'] - stage_total:5.2f} s (the command's wall time less what the stages timed)"
        )
        noop = tree["noop_repro_seconds"]
        lines.append(
            f"  no-op dvc repro: {statistics.median(noop):.2f} s (median of {', '.join(f'{s:.2f}' for s in noop)})"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        choices=range(1, len(MEASURED) + 1),
        help="one-epoch experiments to time after the warm-up (default 3)",
    )
    parser.add_argument(
        "--baseline", metavar="COMMIT", help="also time this commit's code, taking turns with the working tree's"
    )
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument(
        "--report", action="store_true", help="only print (and with --update-docs write) the saved figures"
    )
    parser.add_argument("--update-docs", action="store_true", help="write the figures into docs/performance.md")
    args = parser.parse_args()
    summary = (
        json.loads(args.out.read_text()) if args.report else {**measure(args.repeats, args.baseline), **code_version()}
    )
    publish(summary, args.out, report(summary), MARK, save=not args.report, update_docs=args.update_docs)


if __name__ == "__main__":
    main()
