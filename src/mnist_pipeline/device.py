"""Which torch device a run uses."""

from __future__ import annotations

import torch

from mnist_pipeline.errors import PipelineError


def resolve_device(name: str) -> torch.device:
    """Map the `device` param (auto | cpu | cuda) to a torch.device; auto takes the GPU when present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError("device: got 'cuda', but torch finds no CUDA GPU here; use device: auto or cpu")
    return torch.device(name)
