"""The cost of MLflow's system metrics on a training: the same short training with and without, interleaved.

Each pair trains the reference network from the same seed on the same slice, once inside an MLflow
run that samples CPU, memory (and GPUs) as the train stage does (every store.SYSTEM_METRICS_INTERVAL
seconds, or MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL), and once inside a run that does not; the order
alternates from pair to pair. On a shared, noisy machine only the ratio within a pair means anything,
so the wall-time result is the median of the pairs' ratios. Load from other processes swamps a cost of
1%, so it also reads the CPU time of MLflow's sampling thread itself (/proc) against the training's
CPU time: a cost that does not depend on the load.

    .venv/bin/python benchmarks/system_metrics.py                 # 4 pairs of one full epoch (60000 images)
    .venv/bin/python benchmarks/system_metrics.py --pairs 8 --images 12000   # shorter runs, fewer samples each

Prints one line per training and the median; writes benchmarks/results/system_metrics.json. Needs the
pipeline's data (`dvc repro download`) or MNIST_MIRROR. A benchmark, not a test: nothing asserts on it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from common import DATA, MEAN, MIRROR, RESULTS, STD, machine, new_training, stage_workers
from mnist_pipeline import store  # noqa: F401 (sets MLflow's environment, the sampling interval among it)
from mnist_pipeline.config import TrainConfig
from mnist_pipeline.data import load_split
from mnist_pipeline.device import resolve_device
from mnist_pipeline.training import train

RESULT = RESULTS / "system_metrics.json"


def monitor_cpu_seconds() -> float:
    """CPU seconds MLflow's sampling thread has used so far (Linux /proc; 0 when it is not running)."""
    for thread in threading.enumerate():
        if thread.name == "SystemMetricsMonitor" and thread.native_id:
            fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return 0.0


def timed_training(data_dir: str, images: int, system_metrics: bool) -> tuple[float, float, float, int]:
    """One epoch of training inside an MLflow run: its wall and process CPU seconds, the sampling
    thread's CPU seconds, and how many system-metric samples the run logged."""
    import mlflow

    device = resolve_device("auto")
    config = TrainConfig(epochs=1)
    workers = stage_workers(config, device)
    train_split = load_split(data_dir, True, MEAN, STD, images).to(device)
    test_split = load_split(data_dir, False, MEAN, STD, 1000).to(device)
    model, optimizer, _, generator, plan = new_training(config, device, 0)
    with mlflow.start_run(log_system_metrics=system_metrics) as run:
        started, cpu_started = time.perf_counter(), time.process_time()
        train(model, optimizer, train_split, test_split, config, generator, workers=workers, own_kernels=plan.used)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        monitor_seconds = monitor_cpu_seconds()
    client = mlflow.tracking.MlflowClient()
    samples = len(client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage"))
    return seconds, cpu_seconds, monitor_seconds, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--images", type=int, default=60000, help="training images per run (one epoch)")
    parser.add_argument("--data", default=str(MIRROR if os.environ.get("MNIST_MIRROR") else DATA))
    args = parser.parse_args()

    import logging

    import mlflow

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
        mlflow.set_experiment("system-metrics-cost")
        timed_training(args.data, 500, False)  # warm-up: first-call costs (kernel build, allocator) in neither
        ratios, rows, monitor_shares = [], [], []
        for pair in range(args.pairs):
            order = (False, True) if pair % 2 == 0 else (True, False)
            times = {}
            for system_metrics in order:
                seconds, cpu_seconds, monitor_seconds, samples = timed_training(args.data, args.images, system_metrics)
                times[system_metrics] = seconds
                if system_metrics:
                    monitor_shares.append(monitor_seconds / cpu_seconds)
                rows.append({"pair": pair, "system_metrics": system_metrics, "seconds": round(seconds, 3),
                             "cpu_seconds": round(cpu_seconds, 3), "monitor_cpu_seconds": round(monitor_seconds, 3),
                             "samples": samples})
                print(f"pair {pair}: system metrics {'on ' if system_metrics else 'off'} {seconds:7.2f} s wall, "
                      f"{cpu_seconds:7.2f} s CPU, sampling thread {monitor_seconds:.2f} s CPU, {samples} samples")
            ratios.append(times[True] / times[False])
    median = statistics.median(ratios)
    share = statistics.median(monitor_shares)
    print(f"wall time with / without, per pair: {', '.join(f'{r:.3f}' for r in ratios)}; median {median:.3f}")
    print(f"the sampling thread's CPU time / the training's CPU time: median {share:.2%}")
    RESULT.write_text(json.dumps({
        "machine": machine(), "interval_seconds": float(os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"]),
        "images": args.images, "pairs": args.pairs, "wall_ratios": [round(r, 4) for r in ratios],
        "median_wall_ratio": round(median, 4), "median_monitor_cpu_share": round(share, 5), "runs": rows,
        "command": f"benchmarks/system_metrics.py --pairs {args.pairs} --images {args.images}",
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
