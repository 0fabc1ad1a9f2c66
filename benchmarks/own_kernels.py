"""What the project's kernels cost or buy: training epochs with torch's kernels and with the project's, interleaved.

Two reference networks start from the same weights and train side by side in this process, one epoch of
each in turn (`kernels: torch`, then `kernels: auto`), so that both see the same machine: a shared CPU's
speed drifts over minutes. Both train as the train stage trains, in shards on its threads, and are tested
after each epoch. Prints images/s per epoch, the ratio per round and each network's test accuracy, and
writes benchmarks/results/own_kernels.json.

    .venv/bin/python benchmarks/own_kernels.py              # 3 rounds of one epoch each, about 2 minutes
    .venv/bin/python benchmarks/own_kernels.py --rounds 10

Needs the pipeline's data (`dvc repro download` or `./setup.sh`). A benchmark: no timing here is asserted anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mnist_pipeline.config import TrainConfig
from mnist_pipeline.data import load_split
from mnist_pipeline.training import compute_for, prepare, train

from common import DATA, MEAN, RESULTS, STD, check_data, code_version, machine

CPU = torch.device("cpu")
LABELS = {"torch": "torch's kernels", "auto": "the project's kernels"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="epochs of each network")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=RESULTS / "own_kernels.json")
    args = parser.parse_args()
    check_data(args.data)
    train_split = load_split(args.data, True, MEAN, STD)
    test_split = load_split(args.data, False, MEAN, STD)
    runs: dict[str, dict[str, Any]] = {}  # by kernels: the setup, its config and each round's figures
    for kernels in ("torch", "auto"):  # same seed: same initial weights and the same shuffles
        config = TrainConfig(seed=args.seed, kernels=kernels)
        setup = prepare(config, CPU, len(train_split))
        if (kernels == "auto") != setup.own_kernels:
            sys.exit(f"error: {setup.kernels_line}")
        runs[kernels] = {"setup": setup, "config": config, "images_per_second": [], "test_accuracy": []}
    compute = compute_for(runs["auto"]["config"], CPU)  # as the train stage trains: in shards, on its threads
    for round_ in range(1, args.rounds + 1):
        for run in runs.values():
            config = dataclasses.replace(run["config"], epochs=round_)
            started = time.perf_counter()
            history = train(run["setup"], train_split, test_split, config, compute=compute)
            run["images_per_second"].append(round(len(train_split) / (time.perf_counter() - started)))
            run["test_accuracy"].append(history[-1].test_accuracy)
        rates = {k: run["images_per_second"][-1] for k, run in runs.items()}
        print(
            f"epoch {round_}: "
            + ", ".join(f"{LABELS[k]} {rates[k]:,} images/s ({runs[k]['test_accuracy'][-1]:.2%})" for k in runs)
            + f": {rates['auto'] / rates['torch']:.2f}x",
            flush=True,
        )
    ratios = [a / t for a, t in zip(runs["auto"]["images_per_second"], runs["torch"]["images_per_second"], strict=True)]
    summary = {
        "machine": f"{machine()}; {compute.threads} threads, {runs['auto']['config'].shards} shards",
        "code": code_version(),
        "rounds": args.rounds,
        "seed": args.seed,
        "what": "images/s of training epochs with their test pass, each kernels' epoch in turn",
        "ratios": [round(r, 3) for r in ratios],
        "median_ratio": round(statistics.median(ratios), 3),
        **{f"{name}_{key}": runs[name][key] for name in runs for key in ("images_per_second", "test_accuracy")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"the project's kernels: {summary['median_ratio']:.2f}x torch's, median of {args.rounds} interleaved epochs "
        f"({min(ratios):.2f}-{max(ratios):.2f}x)"
    )


if __name__ == "__main__":
    main()
