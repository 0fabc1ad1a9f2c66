"""PNG plots with matplotlib: accuracy and loss against epoch, the confusion matrix."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or in CI
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from mnist_pipeline.config import PlotsConfig
from mnist_pipeline.files import atomic_path
from mnist_pipeline.records import EpochResult, Mistake


def _figure(config: PlotsConfig) -> tuple[Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=(config.width, config.height), dpi=config.dpi)
    return fig, ax


def accuracy_figure(history: list[EpochResult], config: PlotsConfig) -> Figure:
    """Test accuracy (%) against epoch: the reference tutorial's plot."""
    fig, ax = _figure(config)
    epochs = [r.epoch for r in history]
    ax.plot(epochs, [100 * r.test_accuracy for r in history], marker="o")
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy after each epoch")
    ax.set_xticks(epochs)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def loss_figure(history: list[EpochResult], config: PlotsConfig) -> Figure:
    """Mean training loss and test loss against epoch."""
    fig, ax = _figure(config)
    epochs = [r.epoch for r in history]
    ax.plot(epochs, [r.train_loss for r in history], marker="o", label="train")
    ax.plot(epochs, [r.test_loss for r in history], marker="s", label="test")
    ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss per epoch")
    ax.set_xticks(epochs)
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def confusion_figure(confusion_matrix: list[list[int]], config: PlotsConfig) -> Figure:
    """The confusion matrix as a heat map with counts in each cell."""
    size = max(config.width, config.height)
    fig, ax = plt.subplots(figsize=(size, size), dpi=config.dpi)
    classes = range(len(confusion_matrix))
    image = ax.imshow(confusion_matrix, cmap=config.cmap)
    peak = max(max(row) for row in confusion_matrix) or 1
    for actual in classes:
        for predicted in classes:
            count = confusion_matrix[actual][predicted]
            # Light text on dark cells so every count stays readable.
            color = "white" if count > peak / 2 else "black"
            ax.text(predicted, actual, str(count), ha="center", va="center", fontsize=7, color=color)
    ax.set(
        xlabel="predicted digit",
        ylabel="true digit",
        title="Confusion matrix (test set)",
        xticks=list(classes),
        yticks=list(classes),
    )
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


MISTAKE_TILE = 28  # pixels of one digit
MISTAKE_GAP = (12, 4)  # blank pixels above each digit (its label goes there) and beside it


def mistakes_figure(images, mistakes: list[Mistake], config: PlotsConfig) -> Figure:
    """A grid of misclassified digits, each labelled true -> predicted with the model's confidence.

    `images` holds the raw test images (N, 28, 28); `mistakes` index into it. The
    grid is one image on one set of axes: a subplot per digit made this the slowest
    figure of the plot stage (seconds for 36 digits), for the same picture.
    """
    import numpy as np

    shown = mistakes[: config.mistakes_shown]
    columns = max(1, math.ceil(math.sqrt(len(shown))))
    rows = max(1, math.ceil(len(shown) / columns))
    pitch_y, pitch_x = MISTAKE_TILE + MISTAKE_GAP[0], MISTAKE_TILE + MISTAKE_GAP[1]
    mosaic = np.zeros((rows * pitch_y, columns * pitch_x), dtype=np.uint8)  # 0: blank, as MNIST's background
    fig, ax = plt.subplots(figsize=(1.3 * columns, 1.5 * rows), dpi=config.dpi)
    ax.axis("off")
    for place, mistake in enumerate(shown):
        top, left = (place // columns) * pitch_y + MISTAKE_GAP[0], (place % columns) * pitch_x
        mosaic[top : top + MISTAKE_TILE, left : left + MISTAKE_TILE] = images[mistake.index]
        ax.text(
            left + MISTAKE_TILE / 2,
            top - 2,
            f"{mistake.actual}→{mistake.predicted} {mistake.confidence:.0%}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.imshow(mosaic, cmap="gray_r", interpolation="nearest")
    fig.suptitle(
        f"{len(mistakes)} misclassified test digits (true→predicted, confidence); most confident first", fontsize=9
    )
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write `fig` as PNG to `path` and free it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def check_colormap(name: str) -> None:
    """Raise ConfigError unless matplotlib knows colormap `name` (checked before any work)."""
    from mnist_pipeline.config import ConfigError

    if name not in matplotlib.colormaps:
        raise ConfigError(f"plots.cmap: got {name!r}; expected a matplotlib colormap name such as Blues or viridis")
