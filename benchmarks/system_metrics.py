"""The cost of MLflow's system metrics on a training: the same short training with and without, interleaved.

Each pair trains the reference network from the same seed on the same slice, once inside an MLflow run
that samples CPU, memory (and GPUs) every tracking.SYSTEM_METRICS_INTERVAL seconds, as the train stage
does, and once inside a run that does not; the order alternates from pair to pair. On a shared, noisy
machine only the ratio within a pair means anything, so the result is the median of the pairs' ratios.

    .venv/bin/python benchmarks/system_metrics.py                 # 4 pairs of 6000 images, 1 epoch
    .venv/bin/python benchmarks/system_metrics.py --pairs 6 --images 12000

Prints one line per training and the median; writes benchmarks/results/system_metrics.json. Needs the
pipeline's data (`dvc repro download`) or MNIST_MIRROR. A benchmark, not a test: nothing asserts on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))
RESULT = REPO_ROOT / "benchmarks" / "results" / "system_metrics.json"

from mnist_pipeline import tracking  # noqa: E402
from mnist_pipeline.config import TrainConfig  # noqa: E402
from mnist_pipeline.data import load_split  # noqa: E402
from mnist_pipeline.device import place_model, resolve_device  # noqa: E402
from mnist_pipeline.model import ModelConfig, build_model  # noqa: E402
from mnist_pipeline.seed import set_seed  # noqa: E402
from mnist_pipeline.training import make_optimizer, train  # noqa: E402

MEAN, STD = 0.1307, 0.3081


def timed_training(data_dir: str, images: int, system_metrics: bool) -> tuple[float, int]:
    """Seconds of one epoch of training inside an MLflow run, and how many system-metric samples it logged."""
    import mlflow

    device = resolve_device("auto")
    config = TrainConfig(epochs=1)
    train_split = load_split(data_dir, True, MEAN, STD, images).to(device)
    test_split = load_split(data_dir, False, MEAN, STD, 1000).to(device)
    generator = set_seed(config.seed)
    model = place_model(build_model(ModelConfig()), device)
    optimizer = make_optimizer(model, config)
    mlflow.set_system_metrics_sampling_interval(tracking.SYSTEM_METRICS_INTERVAL)
    with mlflow.start_run(log_system_metrics=system_metrics) as run:
        started = time.perf_counter()
        train(model, optimizer, train_split, test_split, config, generator)
        seconds = time.perf_counter() - started
    client = mlflow.tracking.MlflowClient()
    samples = len(client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage"))
    return seconds, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--images", type=int, default=6000, help="training images per run (one epoch)")
    parser.add_argument("--data", default=os.environ.get("MNIST_MIRROR") or str(REPO_ROOT / "data" / "mnist"))
    args = parser.parse_args()

    import logging

    import mlflow

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as store:
        mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
        mlflow.set_experiment("system-metrics-cost")
        timed_training(args.data, 500, False)  # warm-up: first-call costs (kernel build, allocator) in neither
        ratios, rows = [], []
        for pair in range(args.pairs):
            order = (False, True) if pair % 2 == 0 else (True, False)
            times = {}
            for system_metrics in order:
                seconds, samples = timed_training(args.data, args.images, system_metrics)
                times[system_metrics] = seconds
                rows.append({"pair": pair, "system_metrics": system_metrics, "seconds": round(seconds, 3),
                             "samples": samples})
                print(f"pair {pair}: system metrics {'on ' if system_metrics else 'off'} {seconds:7.2f} s, "
                      f"{samples} samples")
            ratios.append(times[True] / times[False])
    median = statistics.median(ratios)
    print(f"with / without, per pair: {', '.join(f'{r:.3f}' for r in ratios)}; median {median:.3f} "
          f"({(median - 1) * 100:+.1f}% training time)")
    RESULT.write_text(json.dumps({
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "interval_seconds": tracking.SYSTEM_METRICS_INTERVAL,
        "images": args.images, "pairs": args.pairs, "ratios": [round(r, 4) for r in ratios],
        "median_ratio": round(median, 4), "runs": rows,
        "command": f"benchmarks/system_metrics.py --pairs {args.pairs} --images {args.images}",
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
