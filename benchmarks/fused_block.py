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

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

from mnist_pipeline import fused  # noqa: E402
from mnist_pipeline.config import TrainConfig  # noqa: E402
from mnist_pipeline.data import load_split  # noqa: E402
from mnist_pipeline.device import place_model  # noqa: E402
from mnist_pipeline.evaluation import evaluate  # noqa: E402
from mnist_pipeline.model import ModelConfig, build_model  # noqa: E402
from mnist_pipeline.seed import set_seed  # noqa: E402
from mnist_pipeline.training import make_optimizer, train_one_epoch  # noqa: E402

MEAN, STD = 0.1307, 0.3081
CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="epochs of each network")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data" / "mnist")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "fused_block.json")
    args = parser.parse_args()
    if not (args.data / "train-images-idx3-ubyte.gz").exists():
        sys.exit(f"error: {args.data}: no MNIST files; run `dvc repro download` first")
    uses_fused, line = fused.plan("auto", build_model(ModelConfig()), CPU)
    if not uses_fused:
        sys.exit(f"error: the fused block cannot run here: {line}")
    train_split = load_split(args.data, True, MEAN, STD)
    test_split = load_split(args.data, False, MEAN, STD)
    config = TrainConfig(seed=args.seed)
    runs = {}
    for kernels in ("torch", "auto"):  # same seed: same initial weights and the same shuffles
        generator = set_seed(args.seed)
        model = place_model(build_model(ModelConfig()), CPU)
        forward = fused.reference_forward(model) if kernels == "auto" else None
        runs[kernels] = {"model": model, "optimizer": make_optimizer(model, config), "generator": generator,
                         "forward": forward, "images_per_second": [], "test_accuracy": []}
    for round_ in range(1, args.rounds + 1):
        for kernels, run in runs.items():
            started = time.perf_counter()
            train_one_epoch(run["model"], run["optimizer"], train_split, config.batch_size, run["generator"],
                            forward=run["forward"])
            run["images_per_second"].append(round(len(train_split) / (time.perf_counter() - started)))
            run["test_accuracy"].append(evaluate(run["model"], test_split).accuracy)
        torch_rate, fused_rate = runs["torch"]["images_per_second"][-1], runs["auto"]["images_per_second"][-1]
        print(f"epoch {round_}: torch's kernels {torch_rate:,} images/s ({runs['torch']['test_accuracy'][-1]:.2%}), "
              f"fused block {fused_rate:,} images/s ({runs['auto']['test_accuracy'][-1]:.2%}): {fused_rate / torch_rate:.2f}x",
              flush=True)
    ratios = [f / t for f, t in zip(runs["auto"]["images_per_second"], runs["torch"]["images_per_second"])]
    summary = {
        "machine": f"{torch.get_num_threads()} threads, torch {torch.__version__}",
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
