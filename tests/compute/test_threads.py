"""The thread choice: a function of the params and the machine's cores, never of its load."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from mnist_pipeline.compute.threads import ThreadChoice, available_cores, choose, for_training
from mnist_pipeline.config import ConfigError


@pytest.mark.parametrize(
    "setting, cores, shards, threads, reason",
    [
        ("auto", 2, 2, 2, "threads: auto, 2 shards, 2 cores"),
        ("auto", 8, 2, 2, "threads: auto, 2 shards, 8 cores"),  # one thread per shard: more would idle
        ("auto", 2, 4, 2, "threads: auto, 4 shards, 2 cores"),
        ("auto", 1, 1, 1, "threads: auto, 1 shard, 1 core"),
        ("auto", 4, None, 4, "threads: auto, 4 cores"),  # an evaluation: every core
        (1, 2, 2, 1, "threads: 1 in params.yaml, 2 cores"),
    ],
)
def test_auto_is_one_thread_per_shard_up_to_the_cores(setting, cores, shards, threads, reason):
    assert choose(setting, cores, shards) == ThreadChoice(threads, reason)


def test_more_threads_than_cores_is_refused_with_one_line():
    with pytest.raises(ConfigError) as caught:
        choose(3, 2, 2)
    assert str(caught.value) == "threads: got 3; this machine has 2 cores, so at most 2 (or auto)"


def test_the_choice_does_not_read_the_load():
    """A busy process on the machine changes nothing: the count is the same as on a quiet one."""
    quiet = choose("auto", available_cores(), 2)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        cpu = psutil.Process(hog.pid)
        while sum(cpu.cpu_times()[:2]) < 0.5:  # busy for real, not just started
            time.sleep(0.05)
        assert psutil.cpu_percent(interval=0.2) > 100 / os.cpu_count() / 2  # the machine sees the load
        busy = choose("auto", available_cores(), 2)
    finally:
        hog.kill()
        hog.wait()
    assert busy == quiet


def test_a_cpu_training_computes_in_shards_and_says_what_the_bits_depend_on():
    plan = for_training("auto", 2, 2)
    assert (plan.threads, plan.sharded) == (2, True)
    assert plan.line == (
        "train: 2 shards per batch on 2 threads (threads: auto, 2 shards, 2 cores); "
        "the results depend on shards, never on threads"
    )


def test_where_shards_do_not_apply_the_line_says_so():
    gpu = for_training("auto", 2, 16, device="cuda")
    assert (gpu.threads, gpu.sharded) == (16, False) and "shards apply on a CPU only" in gpu.line
    ranks = for_training("auto", 2, 2, processes=2)
    assert (ranks.threads, ranks.sharded) == (1, False)
    assert ranks.line == (
        "train: 1 thread in each of 2 processes (nproc: 2); the results depend on nproc, "
        "and shards apply to one process only"
    )
    compiled = for_training("auto", 2, 2, compiled=True)
    assert (compiled.threads, compiled.sharded) == (1, True) and "one after another" in compiled.line


def test_gpu_processes_share_the_cpu_cores():
    plan = for_training("auto", 2, 16, device="cuda", processes=4)
    assert plan.threads == 4 and "shared by 4 processes" in plan.line
