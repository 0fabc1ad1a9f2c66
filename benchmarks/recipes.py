"""The README's recipes, measured: test accuracy over seeds and training time, as a table in docs/performance.md.

The recipes are the `dvc exp run` commands between the README's
`<!-- recipes -->` markers; this script parses them from there (so the table
measures exactly what the README tells people to run), trains each with the
library's own train loop and the params they set over params.yaml, once per
seed, writes benchmarks/results/recipes.json, and prints (and with
--update-docs writes) the table between the `<!-- recipe-results -->` markers
of docs/performance.md.

    .venv/bin/python benchmarks/recipes.py                      # every recipe, seeds 1 2 3
    .venv/bin/python benchmarks/recipes.py fast --seeds 1       # one recipe, one seed
    .venv/bin/python benchmarks/recipes.py --update-docs
    .venv/bin/python benchmarks/recipes.py --report --update-docs   # the table again, training nothing

Needs data/mnist (`dvc repro download`); torch and PyYAML only.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import REPO_ROOT, machine, write_block

README = REPO_ROOT / "README.md"  # holds the recipes; DOCS (docs/performance.md), their measured table
RECIPES_MARK = "<!-- recipes -->"
RESULTS_MARK = "<!-- recipe-results -->"


def parse_value(text: str) -> Any:
    """A -S value as DVC reads it for the kinds recipes use: 2 -> int, 0.01 -> float, true -> bool, else string.

    (Not PyYAML, so that the GPU check runs where only torch is installed.)
    """
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def readme_recipes(readme: str) -> dict[str, list[str]]:
    """{name: the -S assignments of its `dvc exp run` line}, from the README's recipes block.

    A recipe is a `dvc exp run` line in the block, named by the `# name:`
    comment line right above it.
    """
    parts = readme.split(RECIPES_MARK)
    if len(parts) != 3:
        raise ValueError(f"README.md: expected one block between two {RECIPES_MARK} markers")
    recipes: dict[str, list[str]] = {}
    name = None
    for line in parts[1].splitlines():
        heading = re.match(r"#\s*(\w+):", line.strip())
        if heading:
            name = heading.group(1)
        elif line.strip().startswith("dvc exp run") and name:
            words = shlex.split(line.split("#")[0])
            recipes[name] = [words[i + 1] for i, word in enumerate(words) if word in ("-S", "--set-param")]
            name = None
    return recipes


def recipe_params(assignments: list[str]) -> dict[str, Any]:
    """['model=compact', 'augment.shift=2'] -> {'model': 'compact', 'augment': {'shift': 2}}."""
    params: dict[str, Any] = {}
    for assignment in assignments:
        key, value = assignment.split("=", 1)
        *sections, leaf = key.split(".")
        target = params
        for section in sections:
            target = target.setdefault(section, {})
        target[leaf] = parse_value(value)
    return params


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(base.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def run_recipe(params: dict[str, Any], seed: int) -> dict[str, Any]:
    """Train once as the train stage would (same library calls and threads, no MLflow); return accuracy and time."""
    import torch

    from mnist_pipeline.compute.device import resolve_device
    from mnist_pipeline.config import parse_config
    from mnist_pipeline.data import blank_value, load_split
    from mnist_pipeline.training import Augmentation, compute_for, prepare, train

    config = parse_config(merged(params, {"seed": seed}))
    device = resolve_device(config.train.device)
    if config.train.nproc != 1:  # `auto` may mean several processes in the train stage; this trains in one
        sys.exit(
            f"error: recipes.py trains in one process; give the recipe `-S nproc=1` (it has nproc: {config.train.nproc})"
        )
    compute = compute_for(config.train, device)  # as the train stage trains: in shards, on its threads
    data_dir = REPO_ROOT / config.data.dir
    train_split = load_split(data_dir, True, config.data.mean, config.data.std, config.data.max_train_images).to(device)
    test_split = load_split(data_dir, False, config.data.mean, config.data.std, config.data.max_test_images).to(device)
    setup = prepare(config.train, device, len(train_split))
    started = time.perf_counter()
    history = train(
        setup,
        train_split,
        test_split,
        config.train,
        compute=compute,
        augmentation=Augmentation(config.augment, blank_value(config.data.mean, config.data.std)),
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {
        "seed": seed,
        "test_accuracy": history[-1].test_accuracy,
        "train_seconds": time.perf_counter() - started,
        "device": str(device),
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        "| recipe | params (over params.yaml) | test accuracy, mean ± sd (min–max) | training time, mean (max) | seeds | machine |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, result in results.items():
        accuracies = [r["test_accuracy"] * 100 for r in result["runs"]]
        seconds = [r["train_seconds"] for r in result["runs"]]
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        lines.append(
            f"| **{name}** | `{' '.join(result['assignments'])}` | {statistics.mean(accuracies):.2f}% ± {spread:.2f} "
            f"({min(accuracies):.2f}–{max(accuracies):.2f}) | {statistics.mean(seconds):.1f} s ({max(seconds):.1f} s) | "
            f"{', '.join(str(r['seed']) for r in result['runs'])} | {result['machine']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="recipes to run (default: all in the README)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "recipes.json")
    parser.add_argument("--update-docs", action="store_true", help="write the table into docs/performance.md")
    parser.add_argument("--report", action="store_true", help="train nothing: the table from the saved results")
    args = parser.parse_args()
    import yaml

    recipes = readme_recipes(README.read_text())
    unknown = [n for n in args.names if n not in recipes]
    if unknown:
        sys.exit(f"error: {unknown[0]}: no such recipe in README.md; there are: {', '.join(recipes)}")
    base = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    if not args.report:
        import torch  # noqa: F401  machine() names torch's version once torch is loaded: the same text before and after a run
    for name in [] if args.report else (args.names or list(recipes)):
        previous = results.get(name, {})
        # Runs of the same recipe on the same machine accumulate by seed (a rerun replaces its seed).
        same = previous.get("assignments") == recipes[name] and previous.get("machine") == machine()
        runs = {run["seed"]: run for run in previous.get("runs", [])} if same else {}
        for seed in args.seeds:
            runs[seed] = run_recipe(merged(base, recipe_params(recipes[name])), seed)
            print(
                f"{name} seed {seed}: {runs[seed]['test_accuracy']:.2%} in {runs[seed]['train_seconds']:.1f} s",
                flush=True,
            )
        results[name] = {"assignments": recipes[name], "runs": [runs[s] for s in sorted(runs)], "machine": machine()}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    results = {name: results[name] for name in recipes if name in results}  # README order
    print(table(results))
    if args.update_docs:
        write_block(table(results).splitlines(), RESULTS_MARK, fenced=False)


if __name__ == "__main__":
    main()
