"""Checkpoints: everything that rebuilds a run, written atomically, loaded without pickle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnist_pipeline.errors import PipelineError
from mnist_pipeline.files import atomic_path
from mnist_pipeline.model import ModelConfig, build_model


class CheckpointError(PipelineError):
    """A checkpoint is missing, unreadable or not one of ours."""


def save_checkpoint(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    epoch: int, model_config: ModelConfig, config: dict[str, Any]) -> None:
    """Write weights, optimizer state, epoch and config to `path`, atomically.

    A crash, kill or full disk mid-write leaves the previous checkpoint intact.
    """
    path = Path(path)
    state = {
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer_state": optimizer.state_dict(),
        "epoch": epoch,
        "model_config": model_config.to_dict(),
        "config": config,
    }
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except OSError as exc:  # disk full, read-only folder, a file where the folder should be...
        kept = "the previous checkpoint is kept" if path.is_file() else "no checkpoint was written"
        raise CheckpointError(f"{path}: cannot write the checkpoint ({exc.strerror or exc}); {kept}") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with weights_only=True, so a crafted file cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint; run the train stage first (dvc repro)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable checkpoint ({first_line})") from None


def model_from_checkpoint(checkpoint: dict[str, Any]) -> nn.Module:
    """Rebuild the network the checkpoint was trained as, with its weights."""
    model = build_model(ModelConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model_state"])
    return model
