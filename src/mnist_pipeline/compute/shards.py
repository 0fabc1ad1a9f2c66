"""Arithmetic that does not depend on the thread count: every batch split into a fixed number of shards.

torch's CPU kernels divide their work, and their sums, by the number of threads they run on, so
the same training rounds differently on 1 and on 2 threads. Here torch runs on one thread
everywhere, and parallel work is split into parts whose boundaries the params fix:

- a training batch into `shards` parts (torch.tensor_split: sizes differ by at most one); each
  part's forward and backward runs on one thread, and the parts' gradients and losses are added
  in part order;
- a pass over a test set into chunks of a fixed number of images, concatenated in order.

Which thread computes which part, and how many run at once (`threads`), changes only the speed,
never a bit of the result. A network with batch norm normalises each shard over its own images (as
DistributedDataParallel does per process) and keeps the mean of the shards' running statistics.
Imports torch only.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from mnist_pipeline.model import SeededDropout

# (part number, the part's indices) -> (the part's summed loss, its gradient for each parameter)
PartGradients = Callable[[int, torch.Tensor], tuple[torch.Tensor, Sequence[torch.Tensor]]]


class Workers:
    """`count` threads that compute parts side by side, the calling thread one of them; torch on one thread in each."""

    def __init__(self, count: int):
        self.count = max(1, int(count))
        self._inboxes: list[queue.SimpleQueue] = []
        for number in range(self.count - 1):
            inbox: queue.SimpleQueue = queue.SimpleQueue()
            # Daemon threads: a stage that ends (or fails) never waits for an idle worker.
            threading.Thread(target=_serve, args=(inbox,), name=f"shard-worker-{number + 1}", daemon=True).start()
            self._inboxes.append(inbox)

    def map(self, function: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        """`[function(item) for item in items]`, computed by the threads side by side; in item order.

        Each thread takes the next item not yet taken, so a thread slowed by other work takes fewer.
        The first item's exception, if any, is raised here once every thread has stopped.
        """
        items = list(items)
        if self.count == 1 or len(items) <= 1:
            return [function(item) for item in items]
        todo: queue.SimpleQueue = queue.SimpleQueue()
        for number, item in enumerate(items):
            todo.put((number, item))
        results: list[Any] = [None] * len(items)
        errors: dict[int, BaseException] = {}

        def drain() -> None:
            while True:
                try:
                    number, item = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    results[number] = function(item)
                except BaseException as exc:  # re-raised below, in the calling thread
                    errors[number] = exc

        helpers = self._inboxes[: len(items) - 1]
        finished: queue.SimpleQueue = queue.SimpleQueue()
        for inbox in helpers:
            inbox.put((drain, finished))
        try:
            drain()
        finally:
            for _ in helpers:
                finished.get()
        if errors:
            raise errors[min(errors)]
        return results


def _serve(inbox: queue.SimpleQueue) -> None:
    torch.set_num_threads(1)  # this thread's OpenMP and MKL: one thread per part
    while True:
        task, finished = inbox.get()
        try:
            task()
        finally:
            finished.put(None)


def parts(batch: torch.Tensor, shards: int) -> list[torch.Tensor]:
    """`batch` (indices) as its `shards` parts, empty ones left out."""
    return [part for part in torch.tensor_split(batch, shards) if len(part)]


class ShardedModel:
    """The model's replicas, one per shard, that share its parameters; each keeps its own buffers.

    A network without buffers and without dropout is its own replica: its forward only reads the
    parameters, so threads may run it side by side. Otherwise (batch norm's running statistics,
    dropout's random draws) each shard gets a copy that shares the parameters, and after each step
    the model and every copy hold the mean of the copies' running statistics.
    """

    def __init__(
        self,
        model: nn.Module,
        shards: int,
        forward_of: Callable[[nn.Module], Callable[[torch.Tensor], torch.Tensor]] = lambda m: m,
    ):
        self.model, self.shards = model, shards
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.draws_dropout = any(isinstance(m, SeededDropout) and m.p > 0 for m in model.modules())
        self.copies = self.draws_dropout or any(True for _ in model.buffers())
        self.replicas = [_replica(model) if self.copies else model for _ in range(shards)]
        self.forwards = [forward_of(replica) for replica in self.replicas]
        # Floating-point buffers only: num_batches_tracked counts alike in every copy.
        self._buffers = [[b for b in module.buffers() if b.is_floating_point()] for module in [model, *self.replicas]]

    def gradients(self, workers: Workers, index: torch.Tensor, part_gradients: PartGradients) -> torch.Tensor:
        """Set each parameter's .grad to the gradient of batch `index`'s mean loss; return that loss (detached).

        `part_gradients(number, part)` gives the summed loss of the images `part` (the number-th part of
        `index`) and its gradient for each parameter: autograd_part's, or the project's kernels'.
        """
        pieces = parts(index, self.shards)
        results = workers.map(lambda numbered: part_gradients(*numbered), enumerate(pieces))
        total, grads = results[0][0], list(results[0][1])
        for loss, part_grads in results[1:]:  # in part order: the same sums whatever thread made each part
            total = total + loss
            torch._foreach_add_(grads, list(part_grads))
        torch._foreach_div_(grads, float(len(index)))
        for parameter, grad in zip(self.parameters, grads, strict=True):
            parameter.grad = grad
        if self.copies:
            self._merge_buffers(len(pieces))
        return total / len(index)

    def autograd_part(
        self,
        part_loss: Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor], torch.Tensor],
        dropout_seeds: Sequence[int] | None = None,
    ) -> PartGradients:
        """A part's loss and gradients by torch's autograd, on the part's replica.

        `part_loss(forward, part)` is the summed loss of the images `part` under `forward`. `dropout_seeds`
        seeds each part's dropout (one per shard), when the network has any.
        """

        def compute(number: int, part: torch.Tensor) -> tuple[torch.Tensor, Sequence[torch.Tensor]]:
            if dropout_seeds is not None:
                for module in self.replicas[number].modules():
                    if isinstance(module, SeededDropout) and module.generator is not None:
                        module.generator.manual_seed(int(dropout_seeds[number]))
            loss = part_loss(self.forwards[number], part)
            return loss.detach(), torch.autograd.grad(loss, self.parameters)

        return compute

    @torch.no_grad()
    def _merge_buffers(self, used: int) -> None:
        """The model and every copy get the mean of the first `used` copies' running statistics."""
        model_buffers, copies = self._buffers[0], self._buffers[1:]
        for position in range(len(model_buffers)):
            mean = copies[0][position].clone()
            for buffers in copies[1:used]:
                mean += buffers[position]
            mean /= used
            for buffers in self._buffers:
                buffers[position].copy_(mean)


def _replica(model: nn.Module) -> nn.Module:
    """A copy of `model` with its own buffers and dropout generators, sharing `model`'s parameters."""
    replica = copy.deepcopy(model)
    for original, copied in zip(model.modules(), replica.modules(), strict=True):
        for name, parameter in original.named_parameters(recurse=False):
            setattr(copied, name, parameter)
        if isinstance(copied, SeededDropout):
            copied.generator = torch.Generator()
    return replica


def in_chunks(length: int, chunk: int, workers: Workers, run: Callable[[slice], Any]) -> list[Any]:
    """`[run(slice(i, i + chunk)) for i in range(0, length, chunk)]`, side by side on `workers`, in order; no gradients."""

    def one(start: int) -> Any:
        with torch.no_grad():  # grad mode is per thread
            return run(slice(start, start + chunk))

    return workers.map(one, range(0, length, chunk))
