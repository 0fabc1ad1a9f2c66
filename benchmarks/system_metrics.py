"""What the train stage's system metrics cost: one sample of the machine (mnist_pipeline.tracking.system_metrics), timed.

The stage takes one sample per epoch, on its main thread, and logs it in the batch that holds the epoch's
results, so the sample's own time is the whole cost: no thread runs beside the training. This times
`--samples` samples one after another (wall and CPU time of the calling thread, each) and reports the
median and the largest; a GPU machine samples its GPUs too (NVML), and says how many.

    .venv/bin/python benchmarks/system_metrics.py                 # 200 samples
    .venv/bin/python benchmarks/system_metrics.py --samples 1000

Prints the figures; writes benchmarks/results/system_metrics.json. A benchmark, not a test: nothing asserts on it.
(Earlier versions of that file measured MLflow's sampling thread, which the stage ran until issue 33: see git history.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from mnist_pipeline.tracking.system_metrics import Sampler

from common import RESULTS, machine

RESULT = RESULTS / "system_metrics.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()

    started = time.perf_counter()
    sampler = Sampler()  # once per start: importing nvidia-ml-py and trying NVML, as MLflow's thread did too
    start_ms = (time.perf_counter() - started) * 1000
    walls, cpus = [], []
    for _ in range(args.samples):
        wall, cpu = time.perf_counter(), time.thread_time()
        sample = sampler.sample()
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.thread_time() - cpu) * 1000)
    gpus = len({name.split("_")[1] for name in sample if name.startswith("system/gpu_")})
    figures = {
        "median_wall_ms": statistics.median(walls),
        "max_wall_ms": max(walls),
        "median_cpu_ms": statistics.median(cpus),
        "max_cpu_ms": max(cpus),
    }
    print(
        f"sampler start: {start_ms:.2f} ms; one sample of {len(sample)} metrics ({gpus} GPUs): median "
        f"{figures['median_wall_ms']:.3f} ms wall, {figures['median_cpu_ms']:.3f} ms CPU; at most "
        f"{figures['max_wall_ms']:.3f} ms wall, {figures['max_cpu_ms']:.3f} ms CPU ({args.samples} samples)"
    )
    RESULT.write_text(
        json.dumps(
            {
                "machine": machine(),
                "samples": args.samples,
                "metrics_per_sample": len(sample),
                "gpus": gpus,
                "sampler_start_ms": round(start_ms, 3),
                **{k: round(v, 4) for k, v in figures.items()},
                "command": f"benchmarks/system_metrics.py --samples {args.samples}",
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
