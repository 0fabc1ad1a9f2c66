import math
from itertools import pairwise

import pytest
import torch

from mnist_pipeline.compute.device import place_model
from mnist_pipeline.config import AugmentConfig, TrainConfig, parse_config
from mnist_pipeline.data import Split
from mnist_pipeline.model import ModelConfig, build_model
from mnist_pipeline.records import EpochResult
from mnist_pipeline.training import (
    Augmentation,
    Setup,
    Steps,
    augment_batch,
    draw_augmentation,
    make_optimizer,
    make_schedule,
    prepare,
    train,
    train_one_epoch,
)


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
    setup = prepare(config, torch.device("cpu"), len(split))
    history = train(setup, split, split, config)
    return setup.model, setup.optimizer, history


def _frozen(seed=0):
    """A setup of the reference network that never moves (lr 0): every batch sees the same weights."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig())
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.0), torch.Generator().manual_seed(0))


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
    assert all(
        torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )


def test_other_seed_gives_other_weights():
    first, _, _ = _run(TrainConfig(batch_size=16, epochs=1, seed=1), _toy_split())
    second, _, _ = _run(TrainConfig(batch_size=16, epochs=1, seed=2), _toy_split())
    assert not torch.equal(first.fc.weight, second.fc.weight)


def test_train_one_epoch_returns_the_mean_batch_loss_and_reports_progress():
    split = _toy_split(n=40)
    setup = _frozen()
    model = setup.model
    reports = []

    class Recorder:
        def update(self, steps, running_loss):
            reports.append((steps, running_loss))

        def close(self, result):
            pass

    config = TrainConfig(batch_size=16)
    loss = train_one_epoch(setup, split, config, Steps.of(setup, config), progress=Recorder())
    model.eval()  # the reference CNN has no dropout or batch norm, so train and eval modes agree
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    batch_losses = [
        torch.nn.functional.cross_entropy(model(split.images[order[i : i + 16]]), split.labels[order[i : i + 16]])
        for i in (0, 16, 32)
    ]
    assert loss == pytest.approx(sum(b.item() for b in batch_losses) / 3, rel=1e-5)
    assert sum(steps for steps, _ in reports) == 3  # every batch counted once
    assert reports[-1][1] == pytest.approx(loss, rel=1e-5)


def test_train_one_epoch_runs_the_given_forward_even_when_it_is_falsy():
    # torch.compile's wrapper raises on len(), so `forward or model` broke `compile: true`; a module
    # whose len() is 0 is falsy the same way and must still be the one that runs.
    split = _toy_split(n=32)
    model = build_model(ModelConfig())
    calls = []

    class Falsy(torch.nn.Module):
        def __len__(self):
            return 0

        def forward(self, images):
            calls.append(len(images))
            return model(images)

    config = TrainConfig(batch_size=16)
    setup = Setup(model, make_optimizer(model, config), torch.Generator().manual_seed(0))
    train_one_epoch(setup, split, config, Steps(forward=Falsy()))
    assert calls == [16, 16]


def test_on_epoch_end_sees_the_history_so_far():
    seen = []
    config = TrainConfig(batch_size=32, epochs=2)
    split = _toy_split(n=64)
    train(
        prepare(config, torch.device("cpu"), len(split)),
        split,
        split,
        config,
        on_epoch_end=lambda history: seen.append([r.epoch for r in history]),
    )
    assert seen == [[1], [1, 2]]


def test_training_continues_after_the_given_history():
    config = TrainConfig(batch_size=32, epochs=3)
    split = _toy_split(n=64)
    setup = prepare(config, torch.device("cpu"), len(split))
    done = [EpochResult(1, 1.0, 1.0, 0.1), EpochResult(2, 0.9, 0.9, 0.2)]
    setup.history = list(done)
    history = train(setup, split, split, config)
    assert [r.epoch for r in history] == [1, 2, 3] and history[:2] == done


@pytest.mark.parametrize(
    "name, optimizer_class", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]
)
def test_each_optimizer_builds_and_takes_a_step(name, optimizer_class):
    model = build_model(ModelConfig(architecture="compact"))
    config = TrainConfig(optimizer=name, lr=0.01, momentum=0.9, weight_decay=0.05)
    optimizer = make_optimizer(model, config)
    assert isinstance(optimizer, optimizer_class)
    group = optimizer.param_groups[0]
    assert group["weight_decay"] == 0.05
    assert (group["momentum"] if name == "sgd" else group["betas"][0]) == 0.9  # momentum is Adam's beta1
    before = [p.detach().clone() for p in model.parameters()]
    split = _toy_split(n=16)
    torch.nn.functional.cross_entropy(model(split.images), split.labels).backward()
    optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def _lrs(schedule_name, epochs=4, steps=10, lr=0.1):
    model = build_model(ModelConfig())
    config = TrainConfig(lr=lr, epochs=epochs, schedule=schedule_name)
    optimizer = make_optimizer(model, config)
    schedule = make_schedule(optimizer, config, steps)
    rates = []
    for _ in range(epochs * steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if schedule is not None:
            schedule.step()
    return schedule, rates


def test_constant_schedule_is_no_schedule_at_all():
    schedule, rates = _lrs("constant")
    assert schedule is None and set(rates) == {0.1}


def test_onecycle_warms_up_to_lr_then_anneals_as_the_readme_says():
    """README: from lr/25 up to `lr` over the first quarter of the steps, then down to lr/(25 * 10^4)."""
    _, rates = _lrs("onecycle")
    peak = rates.index(max(rates))
    assert max(rates) == pytest.approx(0.1)
    assert peak == pytest.approx(0.25 * len(rates), abs=1)
    assert rates[0] == pytest.approx(0.1 / 25) and rates[-1] == pytest.approx(0.1 / 25 / 1e4)
    assert all(a <= b for a, b in pairwise(rates[: peak + 1]))


def test_cosine_decays_from_lr_towards_zero():
    _, rates = _lrs("cosine")
    assert rates[0] == pytest.approx(0.1)
    assert all(a >= b for a, b in pairwise(rates))
    assert rates[len(rates) // 2] == pytest.approx(0.05, rel=0.05) and rates[-1] < 0.001


def test_augmentation_is_off_by_default():
    assert not AugmentConfig().enabled and not parse_config({}).augment.enabled
    assert AugmentConfig(shift=1).enabled and AugmentConfig(rotate=5).enabled


def test_augmentation_without_movement_changes_nothing():
    images = _toy_split(n=8).images
    same = augment_batch(images, torch.zeros(8), torch.zeros(8, 2), background=-0.42)
    assert same.shape == images.shape
    assert torch.allclose(same, images, atol=1e-5)


def test_a_whole_pixel_shift_moves_the_digit_and_fills_with_background():
    background = -0.4242
    images = torch.full((1, 1, 28, 28), background)
    images[0, 0, 10:14, 10:14] = 2.0
    moved = augment_batch(images, torch.zeros(1), torch.tensor([[2.0, -1.0]]), background)
    expected = torch.full_like(images, background)
    expected[0, 0, 9:13, 12:16] = 2.0  # two pixels right (x), one up (y)
    assert torch.allclose(moved, expected, atol=1e-5)


def test_augmentation_keeps_labels_shapes_and_draws_from_the_seed():
    split = _toy_split(n=32)
    config = AugmentConfig(shift=2, rotate=10)
    angles, shifts = draw_augmentation(32, config, torch.Generator().manual_seed(3))
    again = draw_augmentation(32, config, torch.Generator().manual_seed(3))
    assert torch.equal(angles, again[0]) and torch.equal(shifts, again[1])
    assert angles.abs().max() <= math.radians(10) and shifts.abs().max() <= 2
    moved = augment_batch(split.images, angles, shifts, background=0.0)
    assert moved.shape == split.images.shape and not torch.allclose(moved, split.images)
    # Training with augmentation consumes the same labels and still learns the toy task.
    train_config = TrainConfig(lr=0.05, batch_size=16, epochs=4, seed=0)
    history = train(
        prepare(train_config, torch.device("cpu"), len(split)),
        split,
        split,
        train_config,
        augmentation=Augmentation(config),
    )
    assert history[-1].test_accuracy > 0.5


def test_the_fast_path_computes_what_the_plain_loop_computes():
    """Channels-last layout and the fused optimizer change the speed, not the result (within float rounding)."""
    split = _toy_split(n=64)
    torch.manual_seed(0)
    plain = build_model(ModelConfig())
    fast = place_model(build_model(ModelConfig()), torch.device("cpu"))
    fast.load_state_dict(plain.state_dict())
    plain_optimizer = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.5)  # the tutorial's
    fast_optimizer = make_optimizer(fast, TrainConfig())
    for step in range(4):
        batch = slice(step * 16, (step + 1) * 16)
        losses = []
        for model, optimizer in ((plain, plain_optimizer), (fast, fast_optimizer)):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(split.images[batch]), split.labels[batch])
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for a, b in zip(plain.parameters(), fast.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_label_smoothing_and_bf16_change_the_loss_the_way_they_should():
    split = _toy_split(n=32)
    losses = {}
    for name, kwargs in {"plain": {}, "smoothed": {"label_smoothing": 0.1}, "bf16": {"precision": "bf16"}}.items():
        config = TrainConfig(batch_size=32, epochs=1, **kwargs)
        setup = _frozen()  # no update: the loss of the initial weights
        losses[name] = train_one_epoch(setup, split, config, Steps.of(setup, config))
    assert losses["smoothed"] != pytest.approx(losses["plain"], rel=1e-4)
    assert losses["bf16"] == pytest.approx(losses["plain"], rel=0.02)  # bf16 keeps about 3 significant digits
