"""Checkpoints: everything that rebuilds a run, written atomically, loaded without pickle."""

from __future__ import annotations

import io
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from mnist_pipeline.config import flatten, training_config
from mnist_pipeline.errors import PipelineError
from mnist_pipeline.files import atomic_path
from mnist_pipeline.model import ModelConfig, build_model
from mnist_pipeline.records import EpochResult


class CheckpointError(PipelineError):
    """A checkpoint is missing, unreadable or not one of ours."""


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    model_config: ModelConfig,
    config: dict[str, Any],
    history: list[EpochResult],
    schedule: LRScheduler | None = None,
) -> None:
    """Write everything that resumes or rebuilds the run to `path`, atomically.

    Weights, optimizer and learning-rate schedule state, the epochs done so far with their metrics, the
    random number generators' states and the training's config: a function of params, code and data,
    so the same training writes the same bytes. (torch.save names an archive's records after the file
    it writes, so it writes to memory, not to the temporary file; the MLflow run id is kept beside the
    checkpoint, in paths.mlflow_run, not in it.) The train stage calls this after every epoch; a crash,
    kill or full disk mid-write leaves the previous checkpoint intact.
    """
    path = Path(path)
    state = {
        # Copies: the project's kernels hold the parameters as views of one block, which torch.save would store whole.
        "model_state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer_state": optimizer.state_dict(),
        "schedule_state": schedule.state_dict() if schedule is not None else None,
        "epoch": len(history),
        "complete": len(history) >= config["epochs"],
        "history": [asdict(result) for result in history],
        "rng": {
            "torch": torch.get_rng_state(),
            "shuffle": generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        "model_config": model_config.to_dict(),
        "config": training_config(config),
    }
    buffer = io.BytesIO()
    torch.save(_canonical(state), buffer)
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getbuffer())
    except OSError as exc:  # disk full, read-only folder, a file where the folder should be...
        kept = "the previous checkpoint is kept" if path.is_file() else "no checkpoint was written"
        raise CheckpointError(f"{path}: cannot write the checkpoint ({exc.strerror or exc}); {kept}") from None


def _canonical(value: Any) -> Any:
    """`value` rebuilt with fresh containers and interned strings, so that its pickle depends on its content only.

    Pickle writes a string or container it has seen before as a reference to it, by object identity: a key
    shared with torch's own code (an interned "lr") comes out as a reference in one run and in full after
    a resume, whose keys were read back from a file. Interning every string and sharing no container
    makes that choice the same for the same content.
    """
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):
        return {_canonical(key): _canonical(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_canonical(item) for item in value)
    return value


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


def require_complete(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Refuse the checkpoint of a training that stopped early: it is not a result."""
    if not checkpoint.get("complete", True):
        raise CheckpointError(
            f"{path}: training stopped after epoch {checkpoint['epoch']} of {checkpoint['config']['epochs']}; "
            "run dvc repro to finish it"
        )


def resume_decision(checkpoint: dict[str, Any] | None, config: dict[str, Any]) -> tuple[bool, str]:
    """Whether training can continue from `checkpoint` under `config`, and the one line that says why.

    Only an unfinished checkpoint made with the same params resumes; config.NOT_TRAINING do not count, since
    they cannot change training: `threads`, for one, changes only the speed of the epochs still to run
    (the count of each start is on the MLflow run; mnist_pipeline.compute.shards fixes the bits).
    """
    if checkpoint is None:
        return False, "no checkpoint yet; training from scratch"
    if checkpoint.get("complete", True):
        return False, "the checkpoint holds a finished training; training from scratch"
    before = flatten(training_config(checkpoint["config"]))
    now = flatten(training_config(config))
    changed = [
        f"{key} {before.get(key)} -> {now.get(key)}"
        for key in sorted(set(before) | set(now))
        if before.get(key) != now.get(key)
    ]
    if changed:
        return False, f"params changed since the unfinished checkpoint ({', '.join(changed)}); training from scratch"
    return True, f"resuming after epoch {checkpoint['epoch']} of {config['epochs']} from the unfinished checkpoint"


@dataclass(frozen=True)
class ResumePoint:
    """What the train stage starts from: an unfinished checkpoint of the same params (`checkpoint`), or nothing."""

    checkpoint: dict[str, Any] | None
    lines: tuple[str, ...]  # what the stage says of it, one line each


def resume_point(path: str | Path, config: dict[str, Any]) -> ResumePoint:
    """Whether the training continues the checkpoint at `path` (a killed run's, which DVC keeps: `persist`).

    Only an unfinished checkpoint of the same params resumes; anything else trains from scratch, an
    unreadable checkpoint included. Either way the lines tell the user which, and why.
    """
    previous, lines = None, []
    if Path(path).exists():
        try:
            previous = load_checkpoint(path)
        except CheckpointError as exc:
            lines.append(f"ignoring {exc}")
    resume, reason = resume_decision(previous, config)
    return ResumePoint(previous if resume else None, (*lines, reason))


def restore_training(
    checkpoint: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    schedule: LRScheduler | None = None,
) -> list[EpochResult]:
    """Put weights, optimizer, schedule and random states back as they were after the last epoch; return its history."""
    model.load_state_dict(checkpoint["model_state"])
    optimizer.load_state_dict(checkpoint["optimizer_state"])
    if schedule is not None and checkpoint.get("schedule_state") is not None:
        schedule.load_state_dict(checkpoint["schedule_state"])
    torch.set_rng_state(checkpoint["rng"]["torch"])
    generator.set_state(checkpoint["rng"]["shuffle"])
    if checkpoint["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
    return [EpochResult(**row) for row in checkpoint["history"]]


def model_from_checkpoint(checkpoint: dict[str, Any]) -> nn.Module:
    """Rebuild the network the checkpoint was trained as, with its weights."""
    model = build_model(ModelConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model_state"])
    return model
