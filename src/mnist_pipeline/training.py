"""The training loop, its optimizers, schedules and augmentation, on tensors held in memory. Imports torch only."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from mnist_pipeline.checkpoint import restore_training
from mnist_pipeline.compute import kernels, threads
from mnist_pipeline.compute.device import place_model, use_threads
from mnist_pipeline.compute.distributed import SINGLE_PROCESS, Ranks, gather_shards, mean_across_ranks, shard, wrap
from mnist_pipeline.compute.kernels import SGD as KernelSGD
from mnist_pipeline.compute.kernels import Adam as KernelAdam
from mnist_pipeline.compute.kernels import ReferenceKernels
from mnist_pipeline.compute.shards import ShardedModel, Workers
from mnist_pipeline.config import AugmentConfig, TrainConfig
from mnist_pipeline.data import Split
from mnist_pipeline.evaluation import EvalResult, evaluate, metrics_from_logits, predict
from mnist_pipeline.model import ModelConfig, build_model
from mnist_pipeline.records import EpochResult
from mnist_pipeline.seed import set_seed

LOSS_REPORT_EVERY = 50  # steps between running-loss updates; each one costs a host sync on GPU


class EpochProgress(Protocol):
    """A progress display for one epoch (the stage uses a tqdm bar)."""

    def update(self, steps: int, running_loss: float | None) -> None: ...

    def close(self, result: EpochResult) -> None: ...


ProgressFactory = Callable[[int, int], EpochProgress]  # (epoch, steps in the epoch) -> display


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Optimizer steps in one pass over `images` (the last batch may be short)."""
    return (images + batch_size - 1) // batch_size


def make_optimizer(model: nn.Module, config: TrainConfig, own_kernels: bool = False) -> torch.optim.Optimizer:
    """SGD with momentum (the reference), Adam or AdamW, with `momentum` as Adam's beta1.

    With `own_kernels` (the reference network in the project's kernels, kernels.plan), the kernels'
    implementations, whose updates have the same bits on any CPU. Otherwise torch's fused
    implementations, which update all parameters in one kernel; on these small models that measured
    faster on CPU as well as GPU, for the same update.
    """
    params, lr, decay = model.parameters(), config.lr, config.weight_decay
    if own_kernels:
        if config.optimizer == "sgd":
            return KernelSGD(params, lr=lr, momentum=config.momentum, weight_decay=decay)
        return KernelAdam(
            params, lr=lr, betas=(config.momentum, 0.999), weight_decay=decay, decoupled=config.optimizer == "adamw"
        )
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=decay, fused=True)
    optimizer_class = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return optimizer_class(params, lr=lr, betas=(config.momentum, 0.999), weight_decay=decay, fused=True)


def make_schedule(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning rate per step: one-cycle or cosine decay with `lr` as the peak; None for constant (the reference).

    One-cycle warms up from lr/25 over the first 25% of the steps and anneals to lr/(25 * 1e4);
    it leaves `momentum` alone (torch would cycle it) so the param means what it says.
    Cosine decays from lr to 0 over all the steps.
    """
    total = config.epochs * steps
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total, pct_start=0.25, cycle_momentum=False
        )
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        )
    return None


def augment_batch(images: torch.Tensor, angles: torch.Tensor, shifts: torch.Tensor, background: float) -> torch.Tensor:
    """Rotate each image by `angles` (radians) and move it by `shifts` (pixels, x and y), on its device.

    Uncovered pixels get the background value (a normalised 0), not 0, so the
    digit does not sit on a grey frame.
    """
    n, _, height, width = images.shape
    cos, sin = torch.cos(angles), torch.sin(angles)
    # affine_grid works in [-1, 1] coordinates: a shift of one pixel is 2 / size.
    theta = torch.stack(
        [
            torch.stack([cos, -sin, -shifts[:, 0] * 2 / width], dim=1),
            torch.stack([sin, cos, -shifts[:, 1] * 2 / height], dim=1),
        ],
        dim=1,
    )  # (N, 2, 3)
    grid = F.affine_grid(theta, [n, 1, height, width], align_corners=False)
    moved = F.grid_sample(images - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return moved + background


def draw_augmentation(
    count: int, config: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform angles (radians) and shifts (pixels) for `count` images, from the seeded shuffle generator."""
    angles = (torch.rand(count, generator=generator) * 2 - 1) * math.radians(config.rotate)
    shifts = (torch.rand(count, 2, generator=generator) * 2 - 1) * config.shift
    return angles, shifts


def precision_context(precision: str, device: torch.device):
    """bf16 autocast when asked for (tensor cores on a GPU); fp32, the reference's arithmetic, otherwise."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class Augmentation:
    """Random shifts and rotations of each training batch, and the value a pixel they uncover gets."""

    config: AugmentConfig = AugmentConfig()
    background: float = 0.0  # a blank pixel after normalisation (data.blank_value): no grey frame


@dataclass(frozen=True)
class Compute:
    """Where a training computes: its processes (several under torchrun) and, on a CPU, the shards' threads."""

    ranks: Ranks = SINGLE_PROCESS
    workers: Workers | None = None  # None: no shards (a GPU, several processes)
    threads: int = 1
    line: str = ""  # the train stage's line on it: what the results depend on


def compute_for(config: TrainConfig, device: torch.device, ranks: Ranks = SINGLE_PROCESS) -> Compute:
    """The threads a training computes on (mnist_pipeline.compute.threads), set before torch's first parallel work.

    Sharded, torch itself runs on one thread and the workers run the shards side by side.
    """
    choice = threads.for_training(
        config.threads,
        config.shards,
        threads.available_cores(),
        device=device.type,
        processes=ranks.world_size,
        compiled=config.compile,
    )
    use_threads(1 if choice.sharded else choice.threads)
    return Compute(ranks, Workers(choice.threads) if choice.sharded else None, choice.threads, choice.line)


@dataclass
class Setup:
    """What one training is made of: the network, its optimizer and schedule, the shuffle generator, whether the
    project's kernels compute it (mnist_pipeline.compute.kernels), and the epochs done (a resume's)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None
    own_kernels: bool = False
    kernels_line: str = ""  # the train stage's line on the kernels
    model_config: ModelConfig = field(default_factory=ModelConfig)
    history: list[EpochResult] = field(default_factory=list)


def prepare(
    config: TrainConfig,
    device: torch.device,
    train_images: int,
    *,
    processes: int = 1,
    checkpoint: dict[str, Any] | None = None,
) -> Setup:
    """A training of `config` on `train_images` images, seeded; continued from `checkpoint` (a resume) when given.

    The kernels are planned once, here: the optimizer and the loop must agree on them.
    """
    generator = set_seed(config.seed)
    model_config = ModelConfig(architecture=config.model)
    model = place_model(build_model(model_config), device)
    kernel_plan = kernels.plan(config.kernels, model, device, config.precision, config.compile, processes)
    optimizer = make_optimizer(model, config, kernel_plan.used)
    schedule = make_schedule(optimizer, config, steps_per_epoch(train_images, config.batch_size))
    history = restore_training(checkpoint, model, optimizer, generator, schedule) if checkpoint is not None else []
    return Setup(model, optimizer, generator, schedule, kernel_plan.used, kernel_plan.line, model_config, history)


def _as_it_is(module: nn.Module) -> nn.Module:
    """The forward of a shard's replica when nothing replaces the module's own."""
    return module


@dataclass(frozen=True)
class Steps:
    """How each step computes its gradient, made once per training (Steps.of).

    `forward` is the model, or DistributedDataParallel's or torch.compile's wrapper of it (they share its
    parameters, so checkpoints keep saving the model itself). On a CPU with one process, `sharded` splits
    each batch into the shards whose gradients add up in order, and `own` (the project's kernels) computes
    each shard when the setup says so.
    """

    forward: Callable[[torch.Tensor], torch.Tensor]
    compute: Compute = Compute()
    sharded: ShardedModel | None = None
    own: ReferenceKernels | None = None

    @classmethod
    def of(cls, setup: Setup, config: TrainConfig, compute: Compute = Compute()) -> Steps:
        forward: Callable[[torch.Tensor], torch.Tensor] = wrap(setup.model, compute.ranks)
        forward_of: Callable[[nn.Module], Callable[[torch.Tensor], torch.Tensor]] = _as_it_is
        if config.compile:
            forward, forward_of = torch.compile(forward), torch.compile
        own = ReferenceKernels(setup.model) if setup.own_kernels else None
        if own is not None and compute.workers is None:
            compute = Compute(compute.ranks, Workers(1), compute.threads, compute.line)
        sharded = ShardedModel(setup.model, config.shards, forward_of) if compute.workers is not None else None
        return cls(forward, compute, sharded, own)


def train_one_epoch(
    setup: Setup,
    split: Split,
    config: TrainConfig,
    steps: Steps,
    *,
    augmentation: Augmentation = Augmentation(),
    progress: EpochProgress | None = None,
) -> float:
    """One shuffled pass over `split` (already on the model's device); returns the mean batch loss.

    With `steps.sharded` (and its workers), each batch's gradient is the ordered sum of its shards'
    (mnist_pipeline.compute.shards): the same bits on any number of threads; with `steps.own` too, the project's
    kernels compute each shard (mnist_pipeline.compute.kernels): the same bits on any CPU. Without, the whole batch
    goes through `steps.forward` at once (a GPU; or, under several processes, each rank's slice of every
    batch, every rank drawing the same permutation, the forward DistributedDataParallel's wrapper).

    The epoch's shuffle and augmentation are drawn up front from the setup's generator
    and moved to the device once: the hot loop makes no host round-trip (the
    loss is summed on the device and read every LOSS_REPORT_EVERY steps only
    when a progress display asks for it).
    """
    model, optimizer, schedule, generator = setup.model, setup.optimizer, setup.schedule, setup.generator
    sharded, own, ranks, workers = steps.sharded, steps.own, steps.compute.ranks, steps.compute.workers
    augment, background = augmentation.config, augmentation.background
    batch_size, label_smoothing, precision = config.batch_size, config.label_smoothing, config.precision
    model.train()
    for replica in sharded.replicas if sharded is not None else ():
        replica.train()
    device = split.images.device
    order = torch.randperm(len(split), generator=generator).to(device)
    if augment.enabled:
        angles, shifts = (t.to(device) for t in draw_augmentation(len(split), augment, generator))
    step_count = steps_per_epoch(len(split), batch_size)
    # Dropout in shards draws from a generator per shard, seeded per step from the run's seed (drawn only
    # for a network with dropout, so that the others' shuffles stay as they were).
    dropout_seeds = (
        torch.randint(0, 2**62, (step_count, sharded.shards), generator=generator).tolist()
        if sharded is not None and sharded.draws_dropout
        else None
    )

    def images_of(index: torch.Tensor) -> torch.Tensor:
        images = split.images[index]
        if augment.enabled:
            images = augment_batch(images, angles[index], shifts[index], background)
        return images

    def part_loss(part_forward: Callable[[torch.Tensor], torch.Tensor], part: torch.Tensor) -> torch.Tensor:
        with precision_context(precision, device):  # autocast is per thread: entered in the one computing the part
            return F.cross_entropy(
                part_forward(images_of(part)), split.labels[part], reduction="sum", label_smoothing=label_smoothing
            )

    loss_sum = torch.zeros((), device=device)
    for step in range(step_count):
        index = shard(order[step * batch_size : (step + 1) * batch_size], ranks)
        if own is not None:
            assert sharded is not None and workers is not None  # Steps.of shards the project's kernels' steps
            loss = sharded.gradients(
                workers, index, lambda _, part: own.gradients(images_of(part), split.labels[part], label_smoothing)
            )
        elif sharded is not None:
            assert workers is not None  # Steps.of makes shards only with their workers
            loss = sharded.gradients(
                workers, index, sharded.autograd_part(part_loss, dropout_seeds[step] if dropout_seeds else None)
            )
        else:
            optimizer.zero_grad(set_to_none=True)
            with precision_context(precision, device):
                loss = F.cross_entropy(
                    steps.forward(images_of(index)), split.labels[index], label_smoothing=label_smoothing
                )
            loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        loss_sum += loss.detach()
        if progress is not None and ((step + 1) % LOSS_REPORT_EVERY == 0 or step + 1 == step_count):
            done = (step + 1) % LOSS_REPORT_EVERY or LOSS_REPORT_EVERY
            progress.update(done, (loss_sum / (step + 1)).item())
    return mean_across_ranks(loss_sum / step_count, ranks).item()


def evaluate_across_ranks(
    model: nn.Module, split: Split, precision: str = "fp32", steps: Steps | None = None
) -> EvalResult:
    """The per-epoch test; under several processes each rank predicts its share and all get the whole result."""
    ranks = steps.compute.ranks if steps is not None else SINGLE_PROCESS
    if not ranks.distributed:
        return evaluate(
            model,
            split,
            precision=precision,
            workers=steps.compute.workers if steps else None,
            kernels=steps.own if steps else None,
        )
    mine = shard(torch.arange(len(split), device=split.images.device), ranks)
    logits = gather_shards(predict(model, split.images[mine], precision=precision), ranks, len(split))
    return metrics_from_logits(logits, split.labels)


def train(
    setup: Setup,
    train_split: Split,
    test_split: Split,
    config: TrainConfig,
    *,
    compute: Compute = Compute(),
    augmentation: Augmentation = Augmentation(),
    progress: ProgressFactory | None = None,
    on_epoch_end: Callable[[list[EpochResult]], None] | None = None,
) -> list[EpochResult]:
    """Train from the setup's history up to config.epochs, testing after every epoch as the reference does.

    Returns the whole history; `on_epoch_end` gets the history so far after each epoch (the train stage
    saves a checkpoint and logs to MLflow there). Under several processes the ranks split the test set
    and share their predictions, so all hold the same history. With `compute.workers` (a CPU, one
    process) every batch is split into `config.shards` parts whose gradients add up in order, and the
    test set into fixed chunks (mnist_pipeline.compute.shards): the results do not depend on how many threads
    the workers have; with the setup's own kernels, not on the CPU either.
    """
    history = list(setup.history)
    steps = Steps.of(setup, config, compute)
    step_count = steps_per_epoch(len(train_split), config.batch_size)
    for epoch in range(len(history) + 1, config.epochs + 1):
        display = progress(epoch, step_count) if progress else None
        train_loss = train_one_epoch(setup, train_split, config, steps, augmentation=augmentation, progress=display)
        test = evaluate_across_ranks(setup.model, test_split, config.precision, steps)
        result = EpochResult(epoch=epoch, train_loss=train_loss, test_loss=test.loss, test_accuracy=test.accuracy)
        if display is not None:
            display.close(result)
        history.append(result)
        if on_epoch_end is not None:
            on_epoch_end(history)
    setup.history = history
    return history
