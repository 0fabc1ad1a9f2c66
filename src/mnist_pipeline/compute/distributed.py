"""Training on several processes with torch.distributed: the launch, the ranks, each rank's share of a batch.

`nproc: N` in params.yaml makes the train stage relaunch itself under
`torchrun --standalone --nproc_per_node N`; `nproc: auto` (the default) means
one per GPU, and one on a CPU. Every rank draws the same seeded
permutation each epoch and takes its slice of every batch, so `batch_size`
stays the batch of one optimizer step (split over the ranks) and `lr` keeps
its meaning: DistributedDataParallel averages the ranks' gradients, which is
the gradient of the whole batch. Imports torch only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from mnist_pipeline.errors import PipelineError


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints and metrics and logs to MLflow."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE_PROCESS = Ranks()  # frozen, so one instance serves every default argument


def current() -> Ranks:
    """This process's ranks, from the variables torchrun sets (none: a single process)."""
    env = os.environ
    return Ranks(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def resolve_nproc(nproc: int | str, device: torch.device) -> int:
    """The number of training processes `nproc` means here: itself, or for `auto` one per GPU, one on a CPU.

    On the CPU, one process with a thread per core beat one single-threaded
    process per core: on the 2-core machine this project is measured on, two
    processes splitting each batch trained the reference at 5,000-5,200 images/s
    against 6,300-7,400 for one (the per-step gradient all-reduce costs more
    than splitting these small layers saves). An earlier measurement, not kept
    in benchmarks/results/ (commit 1a35ea4; see docs/performance.md).
    """
    if nproc != "auto":
        return int(nproc)
    if device.type == "cuda":
        return max(1, torch.cuda.device_count())
    return 1


def check_nproc(nproc: int, batch_size: int, device: torch.device) -> None:
    """Refuse, in one line and before any work, a process count the batch or the GPUs cannot take."""
    if batch_size < nproc:
        raise PipelineError(
            f"nproc: {nproc} processes cannot share batch_size {batch_size}; "
            f"use a batch_size of at least {nproc}, or fewer processes"
        )
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise PipelineError(
            f"nproc: got {nproc}, but torch sees {torch.cuda.device_count()} GPU(s); use at most one process per GPU"
        )


def launch(nproc: int, script: str, args: Sequence[str] = ()) -> int:
    """Run `script` (with `args`) under torchrun with `nproc` processes on this machine; return its exit status."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        script,
        *args,
    ]
    env = dict(os.environ)
    # torchrun sets one thread per process; on a CPU, share the cores instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.run(command, env=env).returncode


def start(
    nproc_setting: int | str,
    batch_size: int,
    device: torch.device,
    script: str,
    before_launch: Callable[[], object] = lambda: None,
) -> tuple[Ranks, torch.device]:
    """This process's rank and device. With `nproc` > 1 outside torchrun, relaunch `script` under torchrun instead
    and exit with its status (`before_launch` first: a check that should fail before any process starts).

    One line says so on launching; the processes it launches come back here under torchrun and join the group.
    """
    ranks = current()
    nproc = resolve_nproc(nproc_setting, device)
    if nproc > 1 and not under_torchrun():
        check_nproc(nproc, batch_size, device)
        before_launch()
        print(f"train: launching {nproc} processes with torchrun (nproc: {nproc_setting})")
        sys.exit(launch(nproc, script))
    return ranks, init(ranks, device) if ranks.distributed else device


def init(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the process group (NCCL on GPUs, Gloo on CPU); return this rank's device."""
    if device.type == "cuda":
        torch.cuda.set_device(ranks.local_rank)
        device = torch.device("cuda", ranks.local_rank)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, ranks: Ranks) -> nn.Module:
    """The model as the training step calls it: DistributedDataParallel across ranks, else itself."""
    if not ranks.distributed:
        return model
    device_ids: list[int] | None = [ranks.local_rank] if next(model.parameters()).is_cuda else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def shard(index: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """This rank's slice of one batch's indices (all of them for a single process)."""
    if not ranks.distributed:
        return index
    return torch.tensor_split(index, ranks.world_size)[ranks.rank]


def mean_across_ranks(value: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The mean of a scalar over all ranks (itself for a single process): one collective, once an epoch."""
    if not ranks.distributed:
        return value
    total = value.clone()
    dist.all_reduce(total)
    return total / ranks.world_size


def gather_shards(rows: torch.Tensor, ranks: Ranks, total: int) -> torch.Tensor:
    """Every rank's `rows` (its tensor_split shard of `total` rows), concatenated in rank order, on every rank."""
    if not ranks.distributed:
        return rows
    sizes = [len(part) for part in torch.tensor_split(torch.empty(total, 0), ranks.world_size)]
    # all_gather needs equal sizes: pad each shard to the largest, then drop the padding.
    padded = rows.new_zeros((sizes[0], *rows.shape[1:]))
    padded[: len(rows)] = rows
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])
