"""What the fused first block buys: training epochs with torch's kernels and with the fused block, interleaved.

Two reference networks start from the same weights and train side by side in
this process, one epoch of each in turn (`kernels: torch`, then `kernels:
auto`), so that both see the same machine: this CPU's speed drifts by up to a
third over minutes. Prints images/s per epoch, the ratio per round and each
network's test accuracy after each epoch, and writes
benchmarks/results/fused_block.json.

    .venv/bin/python benchmarks/fused_block.py              # 3 rounds of one epoch each, about a minute
    .venv/bin/python benchmarks/fused_block.py --rounds 10

Needs the pipeline's data (`dvc repro download` or `./setup.sh`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from common import DATA, MEAN, RESULTS, STD, check_data, machine, new_training, stage_workers
from mnist_pipeline import fused
from mnist_pipeline.config import TrainConfig
from mnist_pipeline.data import load_split
from mnist_pipeline.evaluation import evaluate
from mnist_pipeline.model import ModelConfig, build_model
from mnist_pipeline.shards import ShardedModel
from mnist_pipeline.training import train_one_epoch

CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="epochs of each network")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=RESULTS / "fused_block.json")
    args = parser.parse_args()
    check_data(args.data)
    uses_fused, line = fused.plan("auto", build_model(ModelConfig()), CPU)
    if not uses_fused:
        sys.exit(f"error: the fused block cannot run here: {line}")
    train_split = load_split(args.data, True, MEAN, STD)
    test_split = load_split(args.data, False, MEAN, STD)
    config = TrainConfig(seed=args.seed)
    workers = stage_workers(config, CPU)  # as the train stage trains: in shards, on its threads
    runs = {}
    for kernels in ("torch", "auto"):  # same seed: same initial weights and the same shuffles
        model, optimizer, _, generator = new_training(config, CPU, 0)
        forward_of = fused.reference_forward if kernels == "auto" else (lambda module: module)
        runs[kernels] = {"model": model, "optimizer": optimizer, "generator": generator,
                         "sharded": ShardedModel(model, config.shards, forward_of),
                         "images_per_second": [], "test_accuracy": []}
    for round_ in range(1, args.rounds + 1):
        for kernels, run in runs.items():
            started = time.perf_counter()
            train_one_epoch(run["model"], run["optimizer"], train_split, config.batch_size, run["generator"],
                            sharded=run["sharded"], workers=workers)
            run["images_per_second"].append(round(len(train_split) / (time.perf_counter() - started)))
            run["test_accuracy"].append(evaluate(run["model"], test_split, workers=workers).accuracy)
        torch_rate, fused_rate = runs["torch"]["images_per_second"][-1], runs["auto"]["images_per_second"][-1]
        print(f"epoch {round_}: torch's kernels {torch_rate:,} images/s ({runs['torch']['test_accuracy'][-1]:.2%}), "
              f"fused block {fused_rate:,} images/s ({runs['auto']['test_accuracy'][-1]:.2%}): {fused_rate / torch_rate:.2f}x",
              flush=True)
    ratios = [f / t for f, t in zip(runs["auto"]["images_per_second"], runs["torch"]["images_per_second"])]
    summary = {
        "machine": f"{machine()}; {workers.count} threads, {config.shards} shards",
        "rounds": args.rounds,
        "seed": args.seed,
        "ratios": [round(r, 3) for r in ratios],
        "median_ratio": round(statistics.median(ratios), 3),
        **{f"{name}_{key}": run[key] for name, run in (("torch", runs["torch"]), ("fused", runs["auto"]))
           for key in ("images_per_second", "test_accuracy")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"fused block: {summary['median_ratio']:.2f}x torch's kernels, median of {args.rounds} interleaved epochs "
          f"({min(ratios):.2f}-{max(ratios):.2f}x)")


if __name__ == "__main__":
    main()
