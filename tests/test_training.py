import pytest
import torch

from mnist_pipeline.config import TrainConfig
from mnist_pipeline.data import Split
from mnist_pipeline.model import ModelConfig, build_model
from mnist_pipeline.seed import set_seed
from mnist_pipeline.history import EpochResult
from mnist_pipeline.training import make_optimizer, train, train_one_epoch


def _toy_split(n=96, seed=0):
    """Digits drawn as bright squares at a class-dependent position: easy to learn."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randn(n, 1, 28, 28, generator=g) * 0.1
    for i, label in enumerate(labels.tolist()):
        row, col = divmod(label, 5)
        images[i, 0, 4 + row * 10 : 10 + row * 10, 2 + col * 5 : 6 + col * 5] += 3.0
    return Split(images, labels)


def _run(config, split):
    generator = set_seed(config.seed)
    model = build_model(ModelConfig())
    optimizer = make_optimizer(model, config)
    history = train(model, optimizer, split, split, config, generator)
    return model, optimizer, history


def test_optimizer_is_sgd_with_the_configured_lr_and_momentum():
    optimizer = make_optimizer(build_model(ModelConfig()), TrainConfig(lr=0.02, momentum=0.3))
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["lr"] == 0.02 and optimizer.param_groups[0]["momentum"] == 0.3


def test_training_learns_and_reports_every_epoch():
    config = TrainConfig(lr=0.05, momentum=0.5, batch_size=16, epochs=4, seed=3)
    _, _, history = _run(config, _toy_split())
    assert [r.epoch for r in history] == [1, 2, 3, 4]
    assert history[-1].train_loss < history[0].train_loss
    assert history[-1].test_accuracy > 0.5
    assert all(0.0 <= r.test_accuracy <= 1.0 for r in history)


def test_same_seed_gives_bit_identical_weights():
    config = TrainConfig(lr=0.05, batch_size=16, epochs=2, seed=7)
    first, _, h1 = _run(config, _toy_split())
    second, _, h2 = _run(config, _toy_split())
    assert h1 == h2
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_other_seed_gives_other_weights():
    first, _, _ = _run(TrainConfig(batch_size=16, epochs=1, seed=1), _toy_split())
    second, _, _ = _run(TrainConfig(batch_size=16, epochs=1, seed=2), _toy_split())
    assert not torch.equal(first.fc.weight, second.fc.weight)


def test_train_one_epoch_returns_the_mean_batch_loss_and_reports_progress():
    split = _toy_split(n=40)
    model = build_model(ModelConfig())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # no updates: every batch sees the same weights
    reports = []

    class Recorder:
        def update(self, steps, running_loss):
            reports.append((steps, running_loss))

        def close(self, result):
            pass

    loss = train_one_epoch(model, optimizer, split, 16, torch.Generator().manual_seed(0), Recorder())
    model.eval()  # the reference CNN has no dropout or batch norm, so train and eval modes agree
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    batch_losses = [torch.nn.functional.cross_entropy(model(split.images[order[i:i + 16]]), split.labels[order[i:i + 16]])
                    for i in (0, 16, 32)]
    assert loss == pytest.approx(sum(b.item() for b in batch_losses) / 3, rel=1e-5)
    assert sum(steps for steps, _ in reports) == 3  # every batch counted once
    assert reports[-1][1] == pytest.approx(loss, rel=1e-5)


def test_on_epoch_end_sees_the_history_so_far():
    seen = []
    config = TrainConfig(batch_size=32, epochs=2)
    split = _toy_split(n=64)
    model = build_model(ModelConfig())
    train(model, make_optimizer(model, config), split, split, config, set_seed(0),
          on_epoch_end=lambda history: seen.append([r.epoch for r in history]))
    assert seen == [[1], [1, 2]]


def test_training_continues_after_the_given_history():
    config = TrainConfig(batch_size=32, epochs=3)
    split = _toy_split(n=64)
    model = build_model(ModelConfig())
    done = [EpochResult(1, 1.0, 1.0, 0.1), EpochResult(2, 0.9, 0.9, 0.2)]
    history = train(model, make_optimizer(model, config), split, split, config, set_seed(0), history=done)
    assert [r.epoch for r in history] == [1, 2, 3] and history[:2] == done
