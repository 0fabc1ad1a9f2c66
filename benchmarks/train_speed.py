"""Training speed: the tutorial's own loop against this project's, side by side in one process tree.

Both train the reference CNN at the reference hyperparameters (SGD lr 0.01,
momentum 0.5, batch 64, shuffled, test after every epoch) on the same MNIST
files, one after the other on the same machine, so their ratio is fair even
where absolute times are not comparable across machines. The project's loop
runs as the train stage runs it: on a CPU, in shards on the stage's threads.
(What a whole `dvc exp run` costs besides training is benchmarks/overhead.py's.)

    .venv/bin/python benchmarks/train_speed.py                  # 2 epochs, seed 1
    .venv/bin/python benchmarks/train_speed.py --epochs 10 --seeds 1 2 --update-docs
    .venv/bin/python benchmarks/train_speed.py --report --update-docs   # the docs block from the saved JSON

Prints a table and writes benchmarks/results/train_speed.json; --update-docs
also writes the figures into docs/performance.md. Needs the pipeline's data
(`dvc repro download` or `./setup.sh`). Timings go in this file and the docs,
never into test assertions.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mnist_pipeline import training
from mnist_pipeline.compute import distributed
from mnist_pipeline.compute.device import resolve_device
from mnist_pipeline.compute.distributed import SINGLE_PROCESS, Ranks
from mnist_pipeline.config import TrainConfig
from mnist_pipeline.data import load_split
from mnist_pipeline.training import compute_for, prepare, train

from common import DATA, MEAN, RESULTS, STD, check_data, machine, write_block

SPEED_MARK = "<!-- speed-results -->"  # the docs block for the CPU figures
GPU_SPEED_MARK = "<!-- speed-results-cuda -->"  # and for a GPU's (gpu_check.sh)


class TutorialNet(nn.Module):
    """The tutorial's network, written as the tutorial writes it (independent of the project's code)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.fc = nn.Linear(320, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        return self.fc(x.view(-1, 320))


def torchvision_root(data_dir: Path, workdir: Path) -> Path:
    """torchvision's MNIST reads unpacked files from <root>/MNIST/raw: unpack the pipeline's .gz files there."""
    raw = workdir / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in data_dir.glob("*-ubyte.gz"):
        with gzip.open(gz, "rb") as src, open(raw / gz.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return workdir


def tutorial_loop(root: Path, epochs: int, seed: int, device: torch.device) -> dict:
    """The tutorial's loop: torchvision MNIST with per-sample ToTensor + Normalize, DataLoaders, batch 64."""
    from torchvision import datasets, transforms

    torch.manual_seed(seed)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    # On CUDA the tutorial loads with one worker process into pinned memory; on the CPU, in the main process.
    loader_kwargs: dict[str, Any] = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
    train_loader = torch.utils.data.DataLoader(
        datasets.MNIST(root, train=True, transform=transform), batch_size=64, shuffle=True, **loader_kwargs
    )
    test_set = datasets.MNIST(root, train=False, transform=transform)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=1000, **loader_kwargs)
    model = TutorialNet().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    train_seconds = test_seconds = 0.0
    accuracies = []
    for _ in range(epochs):
        started = time.perf_counter()
        model.train()
        for data, target in train_loader:
            data, target = data.to(device), target.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(data), target)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds += time.perf_counter() - started
        started = time.perf_counter()
        model.eval()
        correct = 0
        with torch.no_grad():
            for data, target in test_loader:
                data, target = data.to(device), target.to(device)
                correct += model(data).argmax(dim=1).eq(target).sum().item()
        test_seconds += time.perf_counter() - started
        accuracies.append(correct / len(test_set))
    return {"train_seconds": train_seconds, "test_seconds": test_seconds, "accuracies": accuracies}


def project_loop(
    data_dir: Path,
    epochs: int,
    seed: int,
    device: torch.device,
    on_epoch_end=None,
    precision: str = "fp32",
    compile: bool = False,
    ranks: Ranks = SINGLE_PROCESS,
    kernels: str = "auto",
) -> dict:
    """This project's loop through its library, at the same hyperparameters (params.yaml's defaults).

    With `ranks` from torchrun, this process is one of several that split every batch, as the
    train stage runs it under `nproc` > 1.
    """
    config = TrainConfig(epochs=epochs, seed=seed, precision=precision, compile=compile, kernels=kernels)
    compute = compute_for(config, device, ranks)  # as the train stage trains
    started = time.perf_counter()
    train_split = load_split(data_dir, True, MEAN, STD).to(device)
    test_split = load_split(data_dir, False, MEAN, STD).to(device)
    load_seconds = time.perf_counter() - started
    setup = prepare(config, device, len(train_split), processes=ranks.world_size)
    marks = []

    def mark(history):
        if device.type == "cuda":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
        if on_epoch_end is not None:
            on_epoch_end(history)

    # The per-epoch test passes, timed apart so that training alone compares with the tutorial's.
    test_seconds = []
    untimed = training.evaluate_across_ranks

    def timed_test_pass(*args, **kwargs):
        begun = time.perf_counter()
        result = untimed(*args, **kwargs)  # returns host floats: the device is done
        test_seconds.append(time.perf_counter() - begun)
        return result

    training.evaluate_across_ranks = timed_test_pass
    try:
        started = time.perf_counter()
        history = train(setup, train_split, test_split, config, compute=compute, on_epoch_end=mark)
    finally:
        training.evaluate_across_ranks = untimed
    return {
        "load_seconds": load_seconds,
        "seconds": marks[-1] - started,
        "test_seconds": sum(test_seconds),
        "processes": ranks.world_size,
        "threads": compute.threads,
        "accuracies": [r.test_accuracy for r in history],
        "kernels": setup.kernels_line,
    }


def project_loop_in_processes(
    nproc: int,
    data_dir: Path,
    epochs: int,
    seed: int,
    device: torch.device,
    workdir: Path,
    precision: str = "fp32",
    compile: bool = False,
    kernels: str = "auto",
) -> dict:
    """The project's loop in `nproc` processes under torchrun, as the train stage runs it (1: in this process).

    `wall_seconds` is the whole launch, Python start-up and data loading included.
    """
    if nproc == 1:
        return project_loop(data_dir, epochs, seed, device, precision=precision, compile=compile, kernels=kernels)
    result = workdir / f"worker-{nproc}-{seed}.json"
    worker = [
        "--worker",
        str(result),
        "--data",
        str(data_dir),
        "--epochs",
        str(epochs),
        "--seeds",
        str(seed),
        "--device",
        device.type,
        "--precision",
        precision,
        "--kernels",
        kernels,
    ] + ["--compile"] * compile
    started = time.perf_counter()
    status = distributed.launch(nproc, __file__, worker)
    if status != 0:
        sys.exit(f"error: the {nproc}-process run failed (exit status {status})")
    return {**json.loads(result.read_text()), "wall_seconds": time.perf_counter() - started}


def worker(args) -> None:
    """One rank of project_loop_in_processes (run by torchrun); rank 0 writes the result."""
    ranks = distributed.current()
    device = distributed.init(ranks, resolve_device(args.device))
    result = project_loop(
        args.data,
        args.epochs,
        args.seeds[0],
        device,
        precision=args.precision,
        compile=args.compile,
        ranks=ranks,
        kernels=args.kernels,
    )
    if ranks.is_main:
        Path(args.worker).write_text(json.dumps(result))
    distributed.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=RESULTS / "train_speed.json")
    # Accepted for tools/gpu_check.sh, which passes it; MLflow's logging is no longer measured here.
    parser.add_argument("--skip-mlflow", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-tutorial", action="store_true", help="time only the project's loop")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="the project loop's precision")
    parser.add_argument("--compile", action="store_true", help="torch.compile the project loop's network")
    parser.add_argument(
        "--kernels",
        default="auto",
        choices=("auto", "torch"),
        help="the `kernels` param of the project loop (torch: no fused first block)",
    )
    parser.add_argument("--update-docs", action="store_true", help="write the figures into docs/performance.md")
    parser.add_argument("--report", action="store_true", help="measure nothing: the figures of the saved results")
    parser.add_argument(
        "--nproc",
        default="auto",
        help="the project loop's processes, as the `nproc` param (default auto, as the train stage resolves it)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one rank of a multi-process run: write the result here
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.report:
        return finish(json.loads(args.out.read_text()), args)
    check_data(args.data)
    device = resolve_device(args.device)
    images = 60000 * args.epochs
    nproc = distributed.resolve_nproc(args.nproc if args.nproc == "auto" else int(args.nproc), device)

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = torchvision_root(args.data, Path(tmp))
        for seed in args.seeds:
            tutorial = None if args.skip_tutorial else tutorial_loop(root, args.epochs, seed, device)
            ours = project_loop_in_processes(
                nproc,
                args.data,
                args.epochs,
                seed,
                device,
                Path(tmp),
                precision=args.precision,
                compile=args.compile,
                kernels=args.kernels,
            )
            # What the processes bring: the same loop in one process, with all the threads.
            single = (
                project_loop(
                    args.data,
                    args.epochs,
                    seed,
                    device,
                    precision=args.precision,
                    compile=args.compile,
                    kernels=args.kernels,
                )
                if nproc > 1
                else None
            )
            runs.append({"seed": seed, "tutorial": tutorial, "project": ours, "project_single_process": single})
            ours_rate = images / ours["seconds"]  # ours includes its per-epoch test passes
            print(
                f"seed {seed}: project {ours_rate:,.0f} images/s (train + test, {nproc} process(es)), "
                f"final {ours['accuracies'][-1]:.2%}",
                flush=True,
            )
            if single is not None:
                print(
                    f"seed {seed}: one process {images / single['seconds']:,.0f} images/s, final {single['accuracies'][-1]:.2%}",
                    flush=True,
                )
            if tutorial is not None:
                tutorial_rate = images / tutorial["train_seconds"]
                print(
                    f"seed {seed}: tutorial {tutorial_rate:,.0f} images/s (train only), final {tutorial['accuracies'][-1]:.2%}; "
                    f"ratio {ours_rate / tutorial_rate:.2f}x",
                    flush=True,
                )

    def mean(values):
        return sum(values) / len(values)

    timed_tutorial = not args.skip_tutorial
    tutorial_rate = mean([images / r["tutorial"]["train_seconds"] for r in runs]) if timed_tutorial else None
    tutorial_total_rate = (
        mean([images / (r["tutorial"]["train_seconds"] + r["tutorial"]["test_seconds"]) for r in runs])
        if timed_tutorial
        else None
    )
    project_rate = mean([images / r["project"]["seconds"] for r in runs])
    project_train_rate = mean([images / (r["project"]["seconds"] - r["project"]["test_seconds"]) for r in runs])
    single_rate = mean([images / r["project_single_process"]["seconds"] for r in runs]) if nproc > 1 else None
    summary = {
        "machine": machine(),
        "device": str(device),
        "project_precision": args.precision,
        "project_compile": args.compile,
        "project_kernels": runs[0]["project"]["kernels"],
        "epochs": args.epochs,
        "seeds": args.seeds,
        "tutorial_images_per_second": round(tutorial_rate) if tutorial_rate is not None else None,
        "tutorial_images_per_second_with_tests": round(tutorial_total_rate)
        if tutorial_total_rate is not None
        else None,
        "project_processes": nproc,
        "project_images_per_second": round(project_train_rate),
        "project_images_per_second_with_tests": round(project_rate),
        "project_single_process_images_per_second_with_tests": round(single_rate) if single_rate else None,
        "project_training_seconds_mean": round(mean([r["project"]["seconds"] for r in runs]), 2),
        "speedup_training_only": round(project_train_rate / tutorial_rate, 2) if tutorial_rate is not None else None,
        "speedup_vs_tutorial_with_tests": round(project_rate / tutorial_total_rate, 2)
        if tutorial_total_rate is not None
        else None,
        "tutorial_final_accuracy_mean": mean([r["tutorial"]["accuracies"][-1] for r in runs])
        if timed_tutorial
        else None,
        "project_final_accuracy_mean": mean([r["project"]["accuracies"][-1] for r in runs]),
        "project_threads": runs[0]["project"]["threads"],
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    finish(summary, args)


def report(summary: dict) -> list[str]:
    """The benchmark's figures as lines of text (also the block in docs/performance.md)."""
    lines = [f"{summary['machine']}; {summary['device']}; {summary['epochs']} epochs, seeds {summary['seeds']}"]
    if summary["tutorial_images_per_second"] is not None:
        lines.append(
            f"tutorial loop:   {summary['tutorial_images_per_second']:,} images/s training "
            f"({summary['tutorial_images_per_second_with_tests']:,} with its test passes), "
            f"final test accuracy {summary['tutorial_final_accuracy_mean']:.2%}"
        )
    processes = summary.get("project_processes", 1)
    seconds = sum(r["project"]["seconds"] for r in summary["runs"]) / len(summary["runs"])
    training_alone = summary.get("project_images_per_second")  # absent from results older than the split timing
    lines.append(
        "project loop:    "
        + (
            f"{training_alone:,} images/s training ({summary['project_images_per_second_with_tests']:,} with its test passes, "
            if training_alone
            else f"{summary['project_images_per_second_with_tests']:,} images/s training with its test passes ("
        )
        + f"{seconds:.1f} s for the {summary['epochs']} epochs{f', {processes} processes' if processes > 1 else ''}), "
        f"final test accuracy {summary['project_final_accuracy_mean']:.2%}"
    )
    if summary.get("project_kernels"):
        threads = f", {summary['project_threads']} threads" if summary.get("project_threads") else ""
        lines.append(f"project kernels: {summary['project_kernels']}{threads}")
    if summary.get("project_single_process_images_per_second_with_tests"):
        single = summary["project_single_process_images_per_second_with_tests"]
        lines.append(
            f"one process:     {single:,} images/s with its test passes, with all the threads; {processes} processes "
            f"are {summary['project_images_per_second_with_tests'] / single:.2f}x that"
        )
    if summary.get("speedup_training_only") is not None:
        lines.append(
            f"speed-up:        {summary['speedup_training_only']:.2f}x the tutorial's training, training alone on both sides; "
            f"{summary['speedup_vs_tutorial_with_tests']:.2f}x with test passes on both sides"
        )
    elif summary.get("speedup_vs_tutorial_training_only") is not None:
        lines.append(
            f"speed-up:        {summary['speedup_vs_tutorial_training_only']:.2f}x the tutorial's training alone, "
            f"{summary['speedup_vs_tutorial_with_tests']:.2f}x with test passes on both sides"
        )
    return lines


def finish(summary: dict, args) -> None:
    lines = report(summary)
    print("\n" + "\n".join(lines))
    if args.update_docs:
        write_block(lines, GPU_SPEED_MARK if summary["device"].startswith("cuda") else SPEED_MARK)


if __name__ == "__main__":
    main()
