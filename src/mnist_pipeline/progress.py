"""Training progress: in a terminal, one live tqdm bar per epoch with the running loss; elsewhere one line per epoch."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from mnist_pipeline.records import EpochResult


class EpochBar:
    """A tqdm bar for one epoch; on close it prints the epoch's test accuracy."""

    def __init__(self, epoch: int, epochs: int, steps: int):
        self._bar = tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=True, dynamic_ncols=True)

    def update(self, steps: int, running_loss: float | None) -> None:
        """Advance by `steps` batches and show the running mean loss."""
        self._bar.update(steps)
        if running_loss is not None:
            self._bar.set_postfix(loss=f"{running_loss:.4f}")

    def close(self, result: EpochResult) -> None:
        """Show the epoch's final numbers and end the bar."""
        self._bar.set_postfix(loss=f"{result.train_loss:.4f}", test_acc=f"{result.test_accuracy:.4f}")
        self._bar.close()


class EpochLine:
    """One line for one epoch, on stdout when it ends: what a log file, CI or `dvc queue logs` wants.

    A bar redrawn with carriage returns is one line to a terminal but a line per redraw to a file. On
    stdout, with the stage's other lines: a log that holds both streams keeps them in order only if
    the line flushes what the stage printed before it (stdout is block-buffered outside a terminal).
    """

    def __init__(self, epoch: int, epochs: int, steps: int):
        self._label, self._steps, self._done, self._started = f"epoch {epoch}/{epochs}", steps, 0, time.perf_counter()

    def update(self, steps: int, running_loss: float | None) -> None:
        """Count the batches; nothing is written before the epoch ends."""
        self._done += steps

    def close(self, result: EpochResult) -> None:
        """Print the epoch's line, flushed: a log followed as it grows (`dvc queue logs -f`) shows the epoch now."""
        seconds = time.perf_counter() - self._started
        print(
            f"{self._label}: {self._done}/{self._steps} batches in {seconds:.1f} s, loss={result.train_loss:.4f}, "
            f"test_acc={result.test_accuracy:.4f}",
            flush=True,
        )


def epoch_bars(epochs: int, terminal: bool | None = None):
    """A progress factory for `training.train`: live bars on a terminal, else one line per epoch.

    `terminal`: whether stderr, where tqdm draws, is a terminal (asked of stderr when None).
    """
    display = EpochBar if (sys.stderr.isatty() if terminal is None else terminal) else EpochLine
    return lambda epoch, steps: display(epoch, epochs, steps)
