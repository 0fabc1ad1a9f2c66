"""Training progress: a live bar in a terminal, one line per epoch in a log."""

import re

from mnist_pipeline.progress import epoch_bars
from mnist_pipeline.records import EpochResult


def _two_epochs(progress) -> None:
    """What training.train does with a progress factory: 40 updates a batch at a time, then close, per epoch."""
    for epoch in (1, 2):
        display = progress(epoch, 40)
        for step in range(40):
            display.update(1, 2.0 / (step + 1))
        display.close(EpochResult(epoch=epoch, train_loss=0.25 / epoch, test_loss=0.5, test_accuracy=0.9 + epoch / 100))


def test_outside_a_terminal_each_epoch_is_one_line(capsys):
    # pytest's capture is a file, not a terminal, as `dvc queue logs`, CI and `> train.log` are.
    _two_epochs(epoch_bars(2))
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err  # no redraws: each would be a line of its own in a file
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert [re.sub(r"in \d+\.\d s", "in _ s", line) for line in lines] == [
        "epoch 1/2: 40/40 batches in _ s, loss=0.2500, test_acc=0.9100",
        "epoch 2/2: 40/40 batches in _ s, loss=0.1250, test_acc=0.9200",
    ]


def test_in_a_terminal_the_bar_is_live(capsys):
    _two_epochs(epoch_bars(2, terminal=True))
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "\r" in captured.err  # tqdm redraws its bar in place
    assert "epoch 2/2: 100%" in captured.err and "test_acc=0.9200" in captured.err
