"""GPU correctness checks for the training core; needs only torch (no dvc, no mlflow). Run by gpu_check.sh."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from mnist_pipeline.compute.device import configure_determinism, place_model  # noqa: E402
from mnist_pipeline.config import AugmentConfig, TrainConfig  # noqa: E402
from mnist_pipeline.data import blank_value, load_split  # noqa: E402
from mnist_pipeline.model import ModelConfig, build_model  # noqa: E402
from mnist_pipeline.training import Augmentation, prepare, train  # noqa: E402

from recipes import readme_recipes, recipe_params  # noqa: E402

DATA = REPO_ROOT / "data" / "mnist"
FLOATS = ("lr", "momentum", "weight_decay", "label_smoothing")
MEAN, STD = 0.1307, 0.3081


def check(name: str, ok: bool, detail: str) -> bool:
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    return ok


DEVICE = torch.device("cuda")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def same_loss_on_gpu_and_cpu(split) -> bool:
    """The GPU computes the same loss and gradients as the CPU on one batch, within float tolerance."""
    torch.manual_seed(0)
    cpu_model = build_model(ModelConfig())
    gpu_model = place_model(build_model(ModelConfig()), DEVICE)
    gpu_model.load_state_dict(cpu_model.state_dict())
    images, labels = split.images[:256], split.labels[:256]
    cpu_loss = F.cross_entropy(cpu_model(images), labels)
    cpu_grads = torch.autograd.grad(cpu_loss, list(cpu_model.parameters()))
    gpu_loss = F.cross_entropy(gpu_model(images.to(DEVICE)), labels.to(DEVICE))
    gpu_grads = torch.autograd.grad(gpu_loss, list(gpu_model.parameters()))
    grad_gap = max((a - b.cpu()).abs().max().item() for a, b in zip(cpu_grads, gpu_grads, strict=True))
    return check(
        "same loss (within 1e-4) and gradients (within 1e-3) as the CPU",
        abs(cpu_loss.item() - gpu_loss.item()) < 1e-4 and grad_gap < 1e-3,
        f"loss {cpu_loss.item():.6f} vs {gpu_loss.item():.6f}, largest gradient gap {grad_gap:.2e}",
    )


def one_run(train_split, test_split, **overrides):
    augment = overrides.pop("augment", AugmentConfig())
    settings: dict[str, Any] = {
        "epochs": 1,
        "seed": 1,
        **{k: float(v) if k in FLOATS else v for k, v in overrides.items()},
    }
    config = TrainConfig(**settings)
    setup = prepare(config, DEVICE, len(train_split))
    sync()
    started = time.perf_counter()
    history = train(setup, train_split, test_split, config, augmentation=Augmentation(augment, blank_value(MEAN, STD)))
    sync()
    return history, time.perf_counter() - started, setup.model


# Test-accuracy floors: (the GPU run on all of MNIST, the dry run on its slice of 3,000 training images).
# The dry run's sit well under what one CPU run of the slice reached: 65.9% (reference, fp32 and bf16),
# 92.0-94.3% (the fast recipe, seeds 1-3), 93.4% (augmentation).
FLOORS = {"reference": (0.95, 0.55), "fast": (0.99, 0.85), "augment": (0.98, 0.85), "compile": (0.97, None)}
FAST_GOAL_SECONDS = 1.0  # the fast recipe's goal on an H100; not reached yet (README: needs CUDA graphs)


def main() -> int:
    global DEVICE
    # `--dry-run`: the same checks on the CPU on a slice, to try the script where there is no GPU.
    dry_run = "--dry-run" in sys.argv
    if dry_run:
        DEVICE = torch.device("cpu")
    else:
        assert torch.cuda.is_available(), "no CUDA GPU: this script checks the GPU path (--dry-run tries it on the CPU)"
    where = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "the CPU (dry run)"
    print(f"{where}; torch {torch.__version__}", flush=True)
    train_cpu = load_split(DATA, True, MEAN, STD, 3000 if dry_run else None)
    test_cpu = load_split(DATA, False, MEAN, STD, 1000 if dry_run else None)
    train_split, test_split = train_cpu.to(DEVICE), test_cpu.to(DEVICE)
    results = [same_loss_on_gpu_and_cpu(train_cpu)]

    def accuracy_check(name: str, kind: str, history, seconds: float, note: str = "") -> bool:
        floor = FLOORS[kind][dry_run]
        accuracy = history[-1].test_accuracy
        return check(
            f"{name}: test accuracy >= {floor:.1%}", accuracy >= floor, f"{accuracy:.2%} in {seconds:.2f} s{note}"
        )

    history, seconds, _ = one_run(train_split, test_split)
    results.append(
        accuracy_check("reference, 1 epoch fp32", "reference", history, seconds, " (first run: includes cuDNN warm-up)")
    )
    history, seconds, _ = one_run(train_split, test_split, precision="bf16")
    results.append(accuracy_check("reference, 1 epoch bf16", "reference", history, seconds))
    configure_determinism(True, torch.device("cuda"))
    first, _, model_a = one_run(train_split, test_split)
    second, _, model_b = one_run(train_split, test_split)
    same = all(
        torch.equal(a, b) for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values(), strict=True)
    )
    results.append(
        check(
            "deterministic: two runs bit-identical",
            same and first == second,
            f"{first[-1].test_accuracy:.4%} vs {second[-1].test_accuracy:.4%}",
        )
    )
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = True
    fast = recipe_params(readme_recipes((REPO_ROOT / "README.md").read_text())["fast"])  # the README's fast recipe
    one_run(train_split, test_split, **{**fast, "epochs": 1})  # warm-up: cuDNN picks its kernels
    fast_seconds = []
    for seed in (1, 2, 3):
        history, seconds, _ = one_run(train_split, test_split, **fast, seed=seed)
        fast_seconds.append(seconds)
        results.append(accuracy_check(f"fast recipe, seed {seed}", "fast", history, seconds))
    # A measurement, not a check: the goal is for an H100 and is not reached yet, so a check would fail every run.
    print(
        f"TIME fast recipe: {min(fast_seconds):.2f}-{max(fast_seconds):.2f} s of training per seed on {where} "
        f"(goal: <= {FAST_GOAL_SECONDS:g} s on an H100)",
        flush=True,
    )
    history, seconds, _ = one_run(train_split, test_split, **fast, augment=AugmentConfig(shift=2, rotate=10))
    results.append(accuracy_check(f"augmentation on the {DEVICE.type.upper()}", "augment", history, seconds))
    if dry_run:
        print("skipped torch.compile in the dry run (it takes minutes on a CPU)")
    else:
        history, seconds, _ = one_run(train_split, test_split, compile=True, epochs=2)
        results.append(accuracy_check("torch.compile, 2 epochs", "compile", history, seconds, " (includes compiling)"))
    print(f"{sum(results)} of {len(results)} checks passed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
