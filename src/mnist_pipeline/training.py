"""The training loop: the reference recipe on tensors held in memory. Imports torch only."""

from __future__ import annotations

from typing import Callable, Optional, Protocol, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mnist_pipeline.config import TrainConfig
from mnist_pipeline.data import Split
from mnist_pipeline.evaluation import evaluate
from mnist_pipeline.history import EpochResult

LOSS_REPORT_EVERY = 50  # steps between running-loss updates; each one costs a host sync on GPU


class EpochProgress(Protocol):
    """A progress display for one epoch (the stage uses a tqdm bar)."""

    def update(self, steps: int, running_loss: Optional[float]) -> None: ...

    def close(self, result: EpochResult) -> None: ...


ProgressFactory = Callable[[int, int], EpochProgress]  # (epoch, steps in the epoch) -> display


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum, as the reference."""
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, split: Split, batch_size: int,
                    generator: torch.Generator, progress: Optional[EpochProgress] = None) -> float:
    """One shuffled pass over `split` (already on the model's device); returns the mean batch loss."""
    model.train()
    device = split.images.device
    order = torch.randperm(len(split), generator=generator).to(device)
    steps = (len(split) + batch_size - 1) // batch_size
    # Summed on the device so the hot loop never waits for the GPU.
    loss_sum = torch.zeros((), device=device)
    for step in range(steps):
        index = order[step * batch_size : (step + 1) * batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(split.images[index]), split.labels[index])
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach()
        if progress is not None and ((step + 1) % LOSS_REPORT_EVERY == 0 or step + 1 == steps):
            done = (step + 1) % LOSS_REPORT_EVERY or LOSS_REPORT_EVERY
            progress.update(done, (loss_sum / (step + 1)).item())
    return (loss_sum / steps).item()


def train(model: nn.Module, optimizer: torch.optim.Optimizer, train_split: Split, test_split: Split,
          config: TrainConfig, generator: torch.Generator, *, history: Sequence[EpochResult] = (),
          progress: Optional[ProgressFactory] = None,
          on_epoch_end: Optional[Callable[[list[EpochResult]], None]] = None) -> list[EpochResult]:
    """Train up to config.epochs, testing after every epoch as the reference does; returns the history.

    `history` holds the epochs already done when resuming; training continues
    after the last of them. `on_epoch_end` gets the history so far after each
    epoch (the train stage saves a checkpoint and logs to MLflow there).
    """
    history = list(history)
    steps = (len(train_split) + config.batch_size - 1) // config.batch_size
    for epoch in range(len(history) + 1, config.epochs + 1):
        display = progress(epoch, steps) if progress else None
        train_loss = train_one_epoch(model, optimizer, train_split, config.batch_size, generator, display)
        test = evaluate(model, test_split)
        result = EpochResult(epoch=epoch, train_loss=train_loss, test_loss=test.loss, test_accuracy=test.accuracy)
        if display is not None:
            display.close(result)
        history.append(result)
        if on_epoch_end is not None:
            on_epoch_end(history)
    return history
