import pytest
from PIL import Image

from mnist_pipeline.config import ConfigError, PlotsConfig
from mnist_pipeline.plots import accuracy_figure, check_colormap, confusion_figure, loss_figure, save_figure
from mnist_pipeline.records import EpochResult

HISTORY = [EpochResult(1, 0.3, 0.1, 0.97), EpochResult(2, 0.1, 0.07, 0.98)]


def test_accuracy_plot_shows_percent_against_epoch(tmp_path):
    config = PlotsConfig(dpi=50, width=4.0, height=3.0)
    fig = accuracy_figure(HISTORY, config)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "epoch" and "accuracy" in ax.get_ylabel()
    assert list(ax.lines[0].get_ydata()) == pytest.approx([97.0, 98.0])
    path = save_figure(fig, tmp_path / "plots" / "accuracy.png")
    assert Image.open(path).size == (200, 150)


def test_loss_plot_has_train_and_test_curves():
    ax = loss_figure(HISTORY, PlotsConfig()).axes[0]
    assert [line.get_label() for line in ax.lines] == ["train", "test"]
    assert list(ax.lines[0].get_ydata()) == [0.3, 0.1]


def test_confusion_plot_writes_every_count(tmp_path):
    fig = confusion_figure([[5, 1], [0, 7]], PlotsConfig(dpi=40))
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["0", "1", "5", "7"]
    assert save_figure(fig, tmp_path / "c.png").stat().st_size > 0


def test_unknown_colormap_is_a_config_error():
    check_colormap("viridis")
    with pytest.raises(ConfigError, match="plots.cmap: got 'Bluez'"):
        check_colormap("Bluez")


def test_mistakes_grid_titles_true_predicted_and_confidence(tmp_path):
    import numpy as np

    from mnist_pipeline.plots import mistakes_figure
    from mnist_pipeline.records import Mistake

    images = np.zeros((10, 28, 28), dtype=np.uint8)
    mistakes = [Mistake(i, 1, 7, 0.9) for i in range(5)]
    images[3, 10:20, 12:16] = 255  # a stroke in the fourth digit, to find in the grid
    fig = mistakes_figure(images, mistakes, PlotsConfig(dpi=40, mistakes_shown=4))
    (ax,) = fig.axes  # one image, not a subplot per digit
    assert [text.get_text() for text in ax.texts] == ["1→7 90%"] * 4  # only mistakes_shown of them
    grid = ax.get_images()[0].get_array()
    assert grid.shape == (2 * (28 + 12), 2 * (28 + 4))  # 2x2 digits, each with room for its label
    assert grid[40 + 12 + 10, 32 + 12] == 255 and grid.sum() == 255 * 10 * 4  # digit 4 sits bottom right
    assert "5 misclassified" in fig._suptitle.get_text()
    assert save_figure(fig, tmp_path / "mistakes.png").stat().st_size > 0
