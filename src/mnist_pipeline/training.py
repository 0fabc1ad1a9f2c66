"""The training loop, its optimizers, schedules and augmentation, on tensors held in memory. Imports torch only."""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Optional, Protocol, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mnist_pipeline.config import AugmentConfig, TrainConfig
from mnist_pipeline.data import Split
from mnist_pipeline.distributed import Ranks, gather_shards, mean_across_ranks, shard, wrap
from mnist_pipeline.evaluation import EvalResult, evaluate, metrics_from_logits, predict
from mnist_pipeline.kernels import Adam as KernelAdam
from mnist_pipeline.kernels import SGD as KernelSGD
from mnist_pipeline.kernels import ReferenceKernels
from mnist_pipeline.history import EpochResult
from mnist_pipeline.shards import ShardedModel, Workers

LOSS_REPORT_EVERY = 50  # steps between running-loss updates; each one costs a host sync on GPU


class EpochProgress(Protocol):
    """A progress display for one epoch (the stage uses a tqdm bar)."""

    def update(self, steps: int, running_loss: Optional[float]) -> None: ...

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
        return KernelAdam(params, lr=lr, betas=(config.momentum, 0.999), weight_decay=decay,
                          decoupled=config.optimizer == "adamw")
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=decay, fused=True)
    optimizer_class = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return optimizer_class(params, lr=lr, betas=(config.momentum, 0.999), weight_decay=decay, fused=True)


def make_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig,
                  steps: int) -> Optional[torch.optim.lr_scheduler.LRScheduler]:
    """The learning rate per step: one-cycle or cosine decay with `lr` as the peak; None for constant (the reference).

    One-cycle warms up over the first 25% of the steps and anneals to lr/1e4;
    it leaves `momentum` alone (torch would cycle it) so the param means what it says.
    Cosine decays from lr to 0 over all the steps.
    """
    total = config.epochs * steps
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total, pct_start=0.25,
                                                   cycle_momentum=False)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
    return None


def augment_batch(images: torch.Tensor, angles: torch.Tensor, shifts: torch.Tensor, background: float) -> torch.Tensor:
    """Rotate each image by `angles` (radians) and move it by `shifts` (pixels, x and y), on its device.

    Uncovered pixels get the background value (a normalised 0), not 0, so the
    digit does not sit on a grey frame.
    """
    n, _, height, width = images.shape
    cos, sin = torch.cos(angles), torch.sin(angles)
    # affine_grid works in [-1, 1] coordinates: a shift of one pixel is 2 / size.
    theta = torch.stack([
        torch.stack([cos, -sin, -shifts[:, 0] * 2 / width], dim=1),
        torch.stack([sin, cos, -shifts[:, 1] * 2 / height], dim=1),
    ], dim=1)  # (N, 2, 3)
    grid = F.affine_grid(theta, [n, 1, height, width], align_corners=False)
    moved = F.grid_sample(images - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return moved + background


def draw_augmentation(count: int, config: AugmentConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform angles (radians) and shifts (pixels) for `count` images, from the seeded shuffle generator."""
    angles = (torch.rand(count, generator=generator) * 2 - 1) * math.radians(config.rotate)
    shifts = (torch.rand(count, 2, generator=generator) * 2 - 1) * config.shift
    return angles, shifts


def precision_context(precision: str, device: torch.device):
    """bf16 autocast when asked for (tensor cores on a GPU); fp32, the reference's arithmetic, otherwise."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, split: Split, batch_size: int,
                    generator: torch.Generator, progress: Optional[EpochProgress] = None, *,
                    schedule: Optional[torch.optim.lr_scheduler.LRScheduler] = None, label_smoothing: float = 0.0,
                    augment: AugmentConfig = AugmentConfig(), background: float = 0.0, precision: str = "fp32",
                    forward: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, ranks: Ranks = Ranks(),
                    sharded: Optional[ShardedModel] = None, workers: Optional[Workers] = None,
                    kernels: Optional[ReferenceKernels] = None) -> float:
    """One shuffled pass over `split` (already on the model's device); returns the mean batch loss.

    With `sharded` (and its `workers`), each batch's gradient is the ordered sum of its shards'
    (mnist_pipeline.shards): the same bits on any number of threads; with `kernels` too, the project's
    kernels compute each shard (mnist_pipeline.kernels): the same bits on any CPU. Without, the whole batch goes
    through `forward` at once (a GPU; or, under several processes, each rank's slice of every batch,
    every rank drawing the same permutation, `forward` the DistributedDataParallel wrapper).

    The epoch's shuffle and augmentation are drawn up front from `generator`
    and moved to the device once: the hot loop makes no host round-trip (the
    loss is summed on the device and read every LOSS_REPORT_EVERY steps only
    when a progress display asks for it).
    """
    model.train()
    for replica in sharded.replicas if sharded is not None else ():
        replica.train()
    # Not `forward or model`: truth-testing a module calls len(), which torch.compile's wrapper refuses.
    forward = model if forward is None else forward
    device = split.images.device
    order = torch.randperm(len(split), generator=generator).to(device)
    if augment.enabled:
        angles, shifts = (t.to(device) for t in draw_augmentation(len(split), augment, generator))
    steps = steps_per_epoch(len(split), batch_size)
    # Dropout in shards draws from a generator per shard, seeded per step from the run's seed (drawn only
    # for a network with dropout, so that the others' shuffles stay as they were).
    dropout_seeds = (torch.randint(0, 2**62, (steps, sharded.shards), generator=generator).tolist()
                     if sharded is not None and sharded.draws_dropout else None)

    def images_of(index: torch.Tensor) -> torch.Tensor:
        images = split.images[index]
        if augment.enabled:
            images = augment_batch(images, angles[index], shifts[index], background)
        return images

    def part_loss(part_forward: Callable[[torch.Tensor], torch.Tensor], part: torch.Tensor) -> torch.Tensor:
        with precision_context(precision, device):  # autocast is per thread: entered in the one computing the part
            return F.cross_entropy(part_forward(images_of(part)), split.labels[part], reduction="sum",
                                   label_smoothing=label_smoothing)

    loss_sum = torch.zeros((), device=device)
    for step in range(steps):
        index = shard(order[step * batch_size : (step + 1) * batch_size], ranks)
        if kernels is not None:
            loss = sharded.gradients(workers, index, lambda _, part: kernels.gradients(
                images_of(part), split.labels[part], label_smoothing))
        elif sharded is not None:
            loss = sharded.gradients(workers, index, sharded.autograd_part(
                part_loss, dropout_seeds[step] if dropout_seeds else None))
        else:
            optimizer.zero_grad(set_to_none=True)
            with precision_context(precision, device):
                loss = F.cross_entropy(forward(images_of(index)), split.labels[index], label_smoothing=label_smoothing)
            loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        loss_sum += loss.detach()
        if progress is not None and ((step + 1) % LOSS_REPORT_EVERY == 0 or step + 1 == steps):
            done = (step + 1) % LOSS_REPORT_EVERY or LOSS_REPORT_EVERY
            progress.update(done, (loss_sum / (step + 1)).item())
    return mean_across_ranks(loss_sum / steps, ranks).item()


def evaluate_across_ranks(model: nn.Module, split: Split, precision: str = "fp32", ranks: Ranks = Ranks(),
                          workers: Optional[Workers] = None, kernels: Optional[ReferenceKernels] = None) -> EvalResult:
    """The per-epoch test; under several processes each rank predicts its share and all get the whole result."""
    if not ranks.distributed:
        return evaluate(model, split, precision=precision, workers=workers, kernels=kernels)
    mine = shard(torch.arange(len(split), device=split.images.device), ranks)
    logits = gather_shards(predict(model, split.images[mine], precision=precision), ranks, len(split))
    return metrics_from_logits(logits, split.labels)


def _as_it_is(module: nn.Module) -> nn.Module:
    """The forward of a shard's replica when nothing replaces the module's own."""
    return module


def train(model: nn.Module, optimizer: torch.optim.Optimizer, train_split: Split, test_split: Split,
          config: TrainConfig, generator: torch.Generator, *, history: Sequence[EpochResult] = (),
          schedule: Optional[torch.optim.lr_scheduler.LRScheduler] = None,
          augment: AugmentConfig = AugmentConfig(), background: float = 0.0,
          progress: Optional[ProgressFactory] = None, ranks: Ranks = Ranks(),
          on_epoch_end: Optional[Callable[[list[EpochResult]], None]] = None,
          workers: Optional[Workers] = None, own_kernels: bool = False) -> list[EpochResult]:
    """Train up to config.epochs, testing after every epoch as the reference does; returns the history.

    `history` holds the epochs already done when resuming; training continues
    after the last of them. `on_epoch_end` gets the history so far after each
    epoch (the train stage saves a checkpoint and logs to MLflow there).
    `background` is the value of a blank pixel after normalisation, which
    augmentation fills uncovered pixels with. Under several processes the
    ranks split the test set and share their predictions, so all hold the same
    history.

    With `workers` (a CPU, one process), every batch is split into `config.shards` parts whose
    gradients add up in order, and the test set into fixed chunks (mnist_pipeline.shards): the
    results do not depend on how many threads `workers` has. With `own_kernels` too (what
    kernels.plan decides, with `optimizer` from make_optimizer(..., own_kernels=True)), the
    reference network trains and is tested in the project's kernels: the same bits on any CPU.
    """
    history = list(history)
    steps = steps_per_epoch(len(train_split), config.batch_size)
    # The wrappers share the model's parameters, so checkpoints keep saving `model` itself.
    forward = wrap(model, ranks)
    forward_of: Callable[[nn.Module], Callable[[torch.Tensor], torch.Tensor]] = _as_it_is
    if config.compile:
        forward, forward_of = torch.compile(forward), torch.compile
    kernels = ReferenceKernels(model) if own_kernels else None
    if kernels is not None and workers is None:
        workers = Workers(1)
    sharded = ShardedModel(model, config.shards, forward_of) if workers is not None else None
    for epoch in range(len(history) + 1, config.epochs + 1):
        display = progress(epoch, steps) if progress else None
        train_loss = train_one_epoch(model, optimizer, train_split, config.batch_size, generator, display,
                                     schedule=schedule, label_smoothing=config.label_smoothing, augment=augment,
                                     background=background, precision=config.precision, forward=forward,
                                     ranks=ranks, sharded=sharded, workers=workers, kernels=kernels)
        test = evaluate_across_ranks(model, test_split, config.precision, ranks, workers, kernels)
        result = EpochResult(epoch=epoch, train_loss=train_loss, test_loss=test.loss, test_accuracy=test.accuracy)
        if display is not None:
            display.close(result)
        history.append(result)
        if on_epoch_end is not None:
            on_epoch_end(history)
    return history
