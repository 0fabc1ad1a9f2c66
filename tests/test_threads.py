"""The thread choice: the cores shared among the stages running at once, through a lock-guarded slot file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO_ROOT
from mnist_pipeline.threads import SLOTS_FILE, Slots, ThreadChoice, available_cores, choose, claim_threads


@pytest.mark.parametrize(
    "cores, running, threads, reason",
    [
        (2, {"training": 1}, 2, "2 cores, 1 training running"),
        (2, {"training": 2}, 1, "2 cores, 2 trainings running"),
        (2, {"training": 3}, 1, "2 cores, 3 trainings running"),  # never 0
        (8, {"training": 3}, 2, "8 cores, 3 trainings running"),
        (4, {"training": 1, "evaluation": 1}, 2, "4 cores, 1 evaluation and 1 training running"),
        (1, {}, 1, "1 core, 1 training running"),
    ],
)
def test_auto_takes_the_cores_divided_by_the_stages_running(cores, running, threads, reason):
    assert choose("auto", cores, running) == ThreadChoice(threads, reason)


@pytest.mark.parametrize(
    "cores, running, busy, threads, reason",
    [
        (2, {"training": 1}, 1, 1, "2 cores, 1 busy with other work, 1 training running"),
        (2, {"training": 1}, 5, 1, "2 cores, 1 busy with other work, 1 training running"),  # never the last core
        (8, {"training": 2}, 2, 3, "8 cores, 2 busy with other work, 2 trainings running"),
    ],
)
def test_auto_leaves_the_cores_other_work_keeps_busy(cores, running, busy, threads, reason):
    assert choose("auto", cores, running, busy) == ThreadChoice(threads, reason)


def test_a_busy_process_shows_as_runnable_elsewhere():
    from mnist_pipeline.threads import runnable_elsewhere

    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert runnable_elsewhere() >= 1
    finally:
        hog.kill()
        hog.wait()


def test_other_slot_holders_are_not_taken_for_other_work(tmp_path, monkeypatch):
    """Two trainings, each runnable: the other one is a slot holder, not a busy process to leave a core to."""
    from mnist_pipeline import threads

    (tmp_path / ".dvc").mkdir()
    monkeypatch.setattr(threads, "runnable_elsewhere", lambda: 1)
    other = Slots(tmp_path / SLOTS_FILE)
    other.claim("training", pid=os.getppid())  # a live process holding a slot
    try:
        choice = claim_threads("auto", tmp_path)
        assert choice == choose("auto", available_cores(), {"training": 2})
    finally:
        Slots(tmp_path / SLOTS_FILE).release()
        other.release(pid=os.getppid())


def test_a_number_is_taken_as_it_is():
    assert choose(3, 4, {"training": 4}) == ThreadChoice(3, "threads: 3 in params.yaml, 4 cores")


def test_the_line_a_stage_prints():
    assert ThreadChoice(1, "2 cores, 2 trainings running").describe("train") == "train: 1 thread (2 cores, 2 trainings running)"
    assert ThreadChoice(2, "2 cores, 1 training running").describe("evaluate") == "evaluate: 2 threads (2 cores, 1 training running)"


def test_slots_count_claims_and_forget_released_ones(tmp_path):
    slots = Slots(tmp_path / "slots.json")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert slots.claim("training", pid=live.pid) == {"training": 1}
        assert slots.claim("evaluation") == {"training": 1, "evaluation": 1}
        assert slots.claim("evaluation") == {"training": 1, "evaluation": 1}  # a second claim is the same slot
        slots.release(pid=live.pid)
        assert slots.claim("training") == {"training": 1}  # this process's slot, now a training
    finally:
        live.kill()
        live.wait()


def test_a_crashed_holders_stale_slot_does_not_count(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    path = tmp_path / "slots.json"
    path.write_text(json.dumps([{"pid": dead_pid, "kind": "training"}]))  # as a killed training leaves it
    assert Slots(path).claim("training") == {"training": 1}
    assert [slot["pid"] for slot in json.loads(path.read_text())] != [dead_pid]  # and it is gone from the file


def test_a_torn_slot_file_counts_as_empty(tmp_path):
    path = tmp_path / "slots.json"
    path.write_text('[{"pid": 12')
    assert Slots(path).claim("training") == {"training": 1}


HOLDER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {src!r})
    from mnist_pipeline.threads import claim_threads
    choice = claim_threads("auto", sys.argv[1])
    print(choice.reason, flush=True)
    sys.stdin.read()  # hold the slot until the test closes stdin
""")


def _holders(root, count):
    script = HOLDER.format(src=str(REPO_ROOT / "src"))
    return [subprocess.Popen([sys.executable, "-c", script, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True) for _ in range(count)]


def test_parallel_starts_each_see_a_different_count_and_exits_free_their_slots(tmp_path):
    (tmp_path / ".dvc").mkdir()
    holders = _holders(tmp_path, 4)  # started together: they race for the lock
    reasons = [holder.stdout.readline().strip() for holder in holders]
    cores = available_cores()
    # Claims are serialised by the lock: the 4 starts saw 1, 2, 3 and 4 trainings running, each exactly once
    # (how many cores each saw busy depends on how far the others had got).
    assert all(reason.startswith(f"{cores} core{'s' if cores != 1 else ''}") for reason in reasons), reasons
    assert sorted(re.search(r"(\d+) trainings? running$", reason).group(1) for reason in reasons) == ["1", "2", "3", "4"]
    assert len(json.loads((tmp_path / SLOTS_FILE).read_text())) == 4
    for holder in holders:
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
    assert json.loads((tmp_path / SLOTS_FILE).read_text()) == []  # each gave its slot back on exit


def test_a_killed_holder_no_longer_counts(tmp_path):
    (tmp_path / ".dvc").mkdir()
    holder, = _holders(tmp_path, 1)
    try:
        holder.stdout.readline()
        holder.kill()  # no exit handler runs: its slot stays in the file
        holder.wait()
        assert len(json.loads((tmp_path / SLOTS_FILE).read_text())) == 1
        assert Slots(tmp_path / SLOTS_FILE).claim("training") == {"training": 1}
    finally:
        Slots(tmp_path / SLOTS_FILE).release()


def test_without_a_dvc_repository_a_stage_counts_only_itself(tmp_path, monkeypatch):
    from mnist_pipeline import threads

    monkeypatch.setattr(threads, "runnable_elsewhere", lambda: 0)  # a quiet machine
    choice = claim_threads("auto", tmp_path, siblings=2)
    assert choice == choose("auto", available_cores(), {"training": 2})
    assert not (tmp_path / ".dvc").exists()  # no .dvc folder made where DVC does not run


def test_a_pinned_number_holds_a_slot_that_auto_stages_count(tmp_path):
    (tmp_path / ".dvc").mkdir()
    slots = Slots(tmp_path / SLOTS_FILE)
    try:
        assert claim_threads(1, tmp_path).threads == 1
        assert len(json.loads((tmp_path / SLOTS_FILE).read_text())) == 1
    finally:
        slots.release()
