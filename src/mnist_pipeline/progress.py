"""Training progress on the terminal: one tqdm bar per epoch with the running loss."""

from __future__ import annotations

from typing import Optional

from tqdm import tqdm

from mnist_pipeline.history import EpochResult


class EpochBar:
    """A tqdm bar for one epoch; on close it prints the epoch's test accuracy."""

    def __init__(self, epoch: int, epochs: int, steps: int):
        self._bar = tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=True, dynamic_ncols=True)

    def update(self, steps: int, running_loss: Optional[float]) -> None:
        """Advance by `steps` batches and show the running mean loss."""
        self._bar.update(steps)
        if running_loss is not None:
            self._bar.set_postfix(loss=f"{running_loss:.4f}")

    def close(self, result: EpochResult) -> None:
        """Show the epoch's final numbers and end the bar."""
        self._bar.set_postfix(loss=f"{result.train_loss:.4f}", test_acc=f"{result.test_accuracy:.4f}")
        self._bar.close()


def epoch_bars(epochs: int):
    """A progress factory for `training.train`."""
    return lambda epoch, steps: EpochBar(epoch, epochs, steps)
