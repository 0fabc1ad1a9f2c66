"""Shards: the same bits on any number of threads, for every network and training option."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from mnist_pipeline.compute.shards import ShardedModel, Workers, parts
from mnist_pipeline.config import AugmentConfig, TrainConfig
from mnist_pipeline.data import Split
from mnist_pipeline.evaluation import evaluate
from mnist_pipeline.model import ModelConfig, SeededDropout, build_model
from mnist_pipeline.training import Augmentation, Compute, prepare, train

from conftest import requires_c_compiler


def _split(n: int, seed: int) -> Split:
    generator = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, 1, 28, 28, generator=generator), torch.randint(0, 10, (n,), generator=generator))


TRAIN, TEST = _split(300, 0), _split(130, 1)
NO_AUGMENT = AugmentConfig()


def _train(
    threads: int, architecture: str = "reference", augment: AugmentConfig = NO_AUGMENT, **settings
) -> tuple[list, dict[str, torch.Tensor]]:
    """Two epochs on `threads` threads, torch itself on one (as the train stage runs); the history and the state."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = TrainConfig(epochs=2, model=architecture, batch_size=64, **{"kernels": "torch", **settings})
        setup = prepare(config, torch.device("cpu"), len(TRAIN))
        history = train(
            setup, TRAIN, TEST, config, compute=Compute(workers=Workers(threads)), augmentation=Augmentation(augment)
        )
    finally:
        torch.set_num_threads(before)
    return history, {k: v.clone() for k, v in setup.model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "architecture, settings, augment",
    [
        ("reference", {}, AugmentConfig()),
        # batch norm (running statistics merged over the shards), Adam, one-cycle, label smoothing
        ("compact", {"optimizer": "adamw", "schedule": "onecycle", "label_smoothing": 0.1}, AugmentConfig()),
        # dropout (a generator per shard) and augmentation drawn from the seed
        ("wide", {"optimizer": "adam"}, AugmentConfig(shift=2.0, rotate=10.0)),
        ("reference", {"precision": "bf16"}, AugmentConfig()),  # autocast, entered in each thread
        ("reference", {"shards": 3}, AugmentConfig()),  # 64 images as 22 + 21 + 21; the last batch (44) as 15 + 15 + 14
    ],
    ids=["reference", "compact-batchnorm", "wide-dropout-augment", "bf16", "three-uneven-shards"],
)
def test_one_two_and_three_threads_give_the_same_bits(architecture, settings, augment):
    one = _train(1, architecture, augment, **settings)
    for threads in (2, 3):
        other = _train(threads, architecture, augment, **settings)
        assert other[0] == one[0]  # losses and accuracies, every epoch
        assert _same(other[1], one[1])  # weights and batch norm statistics


@requires_c_compiler()
@pytest.mark.parametrize(
    "settings", [{}, {"optimizer": "adamw", "schedule": "cosine", "label_smoothing": 0.1}, {"shards": 3}]
)
def test_the_project_kernels_in_shards_give_the_same_bits_on_any_thread_count(settings):
    one = _train(1, kernels="auto", **settings)
    for threads in (2, 3):
        other = _train(threads, kernels="auto", **settings)
        assert other[0] == one[0] and _same(other[1], one[1])
    assert not _same(_train(1, **settings)[1], one[1])  # it did run the project's kernels: torch's round otherwise


def test_the_shard_count_is_what_the_bits_depend_on():
    assert not _same(_train(2, shards=2)[1], _train(2, shards=4)[1])


def test_two_shards_compute_the_whole_batch_gradient():
    """The ordered sum of the shards' gradients is the batch's mean-loss gradient, up to rounding."""
    torch.manual_seed(0)
    model = build_model(ModelConfig())
    index = torch.arange(64)
    sharded = ShardedModel(model, 2)

    def part_loss(forward, part):
        return torch.nn.functional.cross_entropy(forward(TRAIN.images[part]), TRAIN.labels[part], reduction="sum")

    loss = sharded.gradients(Workers(2), index, sharded.autograd_part(part_loss))
    sharded_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    whole = torch.nn.functional.cross_entropy(model(TRAIN.images[index]), TRAIN.labels[index])
    whole.backward()
    assert loss.item() == pytest.approx(whole.item(), rel=1e-6)
    for sharded_grad, parameter in zip(sharded_grads, model.parameters(), strict=True):
        torch.testing.assert_close(sharded_grad, parameter.grad, rtol=1e-4, atol=1e-6)


def test_batch_norm_keeps_the_mean_of_the_shards_running_statistics():
    torch.manual_seed(0)
    model = build_model(ModelConfig(architecture="compact")).train()
    before = copy.deepcopy(model)
    sharded = ShardedModel(model, 2)
    assert all(replica is not model for replica in sharded.replicas)
    assert all(
        a is b for replica in sharded.replicas for a, b in zip(replica.parameters(), model.parameters(), strict=True)
    )

    def part_loss(forward, part):
        return forward(TRAIN.images[part]).sum()

    sharded.gradients(Workers(1), torch.arange(64), sharded.autograd_part(part_loss))
    halves = []
    for part in (torch.arange(32), torch.arange(32, 64)):
        alone = copy.deepcopy(before)
        alone(TRAIN.images[part])
        halves.append(alone.stages[0][1].running_mean)
    torch.testing.assert_close(model.stages[0][1].running_mean, (halves[0] + halves[1]) / 2)
    for replica in sharded.replicas:
        assert torch.equal(replica.stages[0][1].running_mean, model.stages[0][1].running_mean)


def test_parts_split_a_batch_in_order_without_empty_parts():
    assert [p.tolist() for p in parts(torch.arange(5), 2)] == [[0, 1, 2], [3, 4]]
    assert [p.tolist() for p in parts(torch.arange(2), 4)] == [[0], [1]]


def test_workers_return_results_in_item_order_and_spread_them_over_threads():
    seen = set()
    both_started = threading.Barrier(2)

    def work(item):
        seen.add(threading.current_thread().name)
        if item < 2:  # the first two items wait for each other: a second thread must take one
            both_started.wait(timeout=30)
        return item * 2

    assert Workers(3).map(work, range(40)) == [2 * i for i in range(40)]
    assert len(seen) >= 2


def test_an_error_in_a_worker_is_raised_in_the_caller_once_all_threads_stopped():
    def work(item):
        if item == 3:
            raise ValueError("part 3 failed")
        return item

    workers = Workers(2)
    with pytest.raises(ValueError, match="part 3 failed"):
        workers.map(work, range(8))
    assert workers.map(work, [0, 1]) == [0, 1]  # the threads still serve


def test_seeded_dropout_draws_from_its_generator_and_is_plain_dropout_without_one():
    layer = SeededDropout(0.5).train()
    x = torch.ones(1000)
    layer.generator = torch.Generator().manual_seed(7)
    first = layer(x)
    layer.generator.manual_seed(7)
    assert torch.equal(layer(x), first) and set(first.unique().tolist()) == {0.0, 2.0}
    layer.generator = None
    torch.manual_seed(3)
    plain = layer(x)
    torch.manual_seed(3)
    assert torch.equal(plain, torch.nn.functional.dropout(x, 0.5))
    assert torch.equal(layer.eval()(x), x)


def test_evaluation_in_chunks_gives_the_same_bits_on_any_thread_count():
    torch.manual_seed(0)
    model = build_model(ModelConfig())
    results = [evaluate(model, TEST, batch_size=40, workers=Workers(threads)) for threads in (1, 2, 3)]
    assert results[0] == results[1] == results[2]
