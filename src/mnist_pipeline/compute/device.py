"""Which torch device a run uses."""

from __future__ import annotations

import os

import torch
from torch import nn

from mnist_pipeline.errors import PipelineError


def resolve_device(name: str) -> torch.device:
    """Map the `device` param (auto | cpu | cuda) to a torch.device; auto takes the GPU when present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError("device: got 'cuda', but torch finds no CUDA GPU here; use device: auto or cpu")
    return torch.device(name)


def use_threads(count: int) -> None:
    """Run torch's CPU kernels on `count` threads (from mnist_pipeline.compute.threads), before any parallel work."""
    torch.set_num_threads(count)


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move `model` to `device` in channels-last layout.

    oneDNN's CPU convolutions and cuDNN's tensor-core kernels both run faster on
    NHWC activations; for the reference CNN a training step measured about 1.6x
    faster on a 2-core CPU (a one-off measurement, not kept: docs/performance.md). One-channel MNIST images are NCHW and NHWC at once, so the
    data needs no conversion. Results differ from NCHW only in rounding.
    """
    # torch's stubs give Module.to a device or a memory_format; at run time it takes both in one call.
    return model.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]  # see above


def configure_determinism(enabled: bool, device: torch.device) -> str:
    """On a GPU with `enabled`, make runs repeat bit for bit, at some speed cost; the stage's line on it.

    On the CPU the stages' arithmetic is fixed already (mnist_pipeline.compute.shards, mnist_pipeline.compute.kernels),
    and nothing is set. On a GPU, cuDNN picks convolution algorithms by timing and some of them
    accumulate in a varying order, so two runs differ in the last bits and drift apart over epochs;
    deterministic algorithms and a fixed cuBLAS workspace stop that.
    """
    if device.type != "cuda":
        return ""
    if not enabled:
        return (
            "deterministic: false: cuDNN's fastest kernels, whose sums vary, so two runs differ in the last "
            "bits; true (the default) repeats them"
        )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)
    return "deterministic: true: deterministic GPU kernels, the same bits every run on this GPU model"
