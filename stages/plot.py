"""Stage plot: PNGs of accuracy and loss against epoch, the confusion matrix and the misclassified digits."""

from __future__ import annotations

from pathlib import Path

from mnist_pipeline.cli import run_stage  # first: its quick exit must be the first exit handler

# isort: split
from mnist_pipeline.config import load_config
from mnist_pipeline.data import raw_images
from mnist_pipeline.plots import (
    accuracy_figure,
    check_colormap,
    confusion_figure,
    loss_figure,
    mistakes_figure,
    save_figure,
)
from mnist_pipeline.reports import read_confusion, read_history, read_mistakes
from mnist_pipeline.timing import StageClock


def main() -> None:
    clock = StageClock("plot")
    config = load_config()
    check_colormap(config.plots.cmap)
    clock.mark("start-up and imports")
    history = read_history(config.paths.history)
    out = Path(config.paths.plots_dir)
    written = [
        save_figure(accuracy_figure(history, config.plots), out / "accuracy.png"),
        save_figure(loss_figure(history, config.plots), out / "loss.png"),
        save_figure(confusion_figure(read_confusion(config.paths.confusion), config.plots), out / "confusion.png"),
        save_figure(
            mistakes_figure(
                raw_images(config.data.dir, train=False), read_mistakes(config.paths.mistakes), config.plots
            ),
            out / "mistakes.png",
        ),
    ]
    for path in written:
        print(f"plot: {path}")
    clock.mark("plots")
    clock.report()


if __name__ == "__main__":
    run_stage(main)
