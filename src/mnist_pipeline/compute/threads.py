"""How many threads a stage computes on: a function of the params and this machine's cores, never of its load.

Since the arithmetic does not depend on the thread count (mnist_pipeline.compute.shards), the count only
sets the speed. A training uses one thread per shard, up to the cores; an evaluation, every core.
Parallel `dvc queue` jobs do not divide the cores among themselves: their threads wait on each
other with blocking waits, never spinning, so the operating system shares the cores among them
(docs/performance.md measures what that costs against a share each).
No torch here: a stage sets torch's thread count before torch starts any parallel work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mnist_pipeline.config import ConfigError


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells, else the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ThreadChoice:
    """The threads a stage computes on and the one line that says why."""

    threads: int
    reason: str

    def describe(self, stage: str) -> str:
        return f"{stage}: {self.threads} {plural('thread', self.threads)} ({self.reason})"


def choose(setting: int | str, cores: int, shards: int | None = None) -> ThreadChoice:
    """`auto`: one thread per shard up to the cores (a training), or every core (an evaluation: `shards` None).

    More threads than the cores only makes them wait for each other: refused, in one line. Checked
    here, not when params.yaml is parsed, because the cores are this machine's: a checkpoint's
    config, read on another machine, stays valid.
    """
    core_count = f"{cores} {plural('core', cores)}"
    if setting != "auto":
        if int(setting) > cores:
            raise ConfigError(f"threads: got {setting}; this machine has {core_count}, so at most {cores} (or auto)")
        return ThreadChoice(int(setting), f"threads: {setting} in params.yaml, {core_count}")
    if shards is None:
        return ThreadChoice(cores, f"threads: auto, {core_count}")
    return ThreadChoice(max(1, min(shards, cores)), f"threads: auto, {shards} {plural('shard', shards)}, {core_count}")


def plural(kind: str, count: int) -> str:
    return kind if count == 1 else kind + "s"


@dataclass(frozen=True)
class TrainingThreads:
    """How a training computes: on how many threads, whether in shards (mnist_pipeline.compute.shards), and the line saying so."""

    threads: int
    sharded: bool
    line: str


def for_training(
    setting: int | str,
    shards: int,
    cores: int,
    *,
    device: str = "cpu",
    processes: int = 1,
    compiled: bool = False,
) -> TrainingThreads:
    """The train stage's threads. Shards apply to one process on a CPU; elsewhere the line says what the bits depend on."""
    if device != "cpu":
        choice = choose(setting, cores)
        if setting == "auto" and processes > 1:  # one process per GPU: they share the CPU's cores
            choice = ThreadChoice(max(1, cores // processes), f"{choice.reason}, shared by {processes} processes")
        return TrainingThreads(
            choice.threads,
            False,
            f"train: {choice.threads} CPU {plural('thread', choice.threads)} "
            f"beside the GPU ({choice.reason}); shards apply on a CPU only",
        )
    if processes > 1:
        return TrainingThreads(
            1,
            False,
            f"train: 1 thread in each of {processes} processes (nproc: {processes}); "
            "the results depend on nproc, and shards apply to one process only",
        )
    if compiled:
        # torch.compile's compiled code is not run from several threads at once here: one thread, same bits.
        return TrainingThreads(
            1,
            True,
            f"train: {shards} {plural('shard', shards)} per batch, one after another on 1 thread (compile is on)",
        )
    choice = choose(setting, cores, shards)
    return TrainingThreads(
        choice.threads,
        True,
        f"train: {shards} {plural('shard', shards)} per batch on {choice.threads} "
        f"{plural('thread', choice.threads)} ({choice.reason}); "
        "the results depend on shards, never on threads",
    )
