"""Result records shared by training, evaluation, checkpoints, metric files and plots (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EpochResult:
    """What one epoch produced; a row of the history file."""

    epoch: int
    train_loss: float  # mean cross-entropy over the epoch's batches
    test_loss: float
    test_accuracy: float  # fraction, 0..1

    def as_metrics(self) -> dict[str, float]:
        """The numbers, keyed as MLflow and the history file name them."""
        return {"train_loss": self.train_loss, "test_loss": self.test_loss, "test_accuracy": self.test_accuracy}


@dataclass(frozen=True)
class Mistake:
    """A test image the model gets wrong."""

    index: int  # position in the test set
    actual: int
    predicted: int
    confidence: float  # the model's probability for its (wrong) prediction
