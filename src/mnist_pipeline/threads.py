"""How many compute threads a stage takes: its share of the cores, beside the other trainings running.

Each training (and evaluation) process holds a slot in a small JSON file under
the repository's .dvc/tmp while it runs. Parallel `dvc queue` workers run in
temporary copies of the repository, but DVC points DVC_ROOT at the user's
repository for every stage, so all of them see the one file. `threads: auto`
takes the machine's cores divided by the slots held; a slot whose process is
gone (killed, crashed) does not count and is dropped by the next claim.
Cores that other work keeps busy (processes the kernel reports runnable beyond
this stage and the other slot holders) are left to it: beside one busy process
on 2 cores a training takes 1 thread, and slows in proportion instead of its
threads waiting on each other behind the busy one.

Standard library only (and config, which is too at import): the stage claims its slot before torch starts any
parallel work.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from mnist_pipeline.config import available_cores

SLOTS_FILE = Path(".dvc") / "tmp" / "compute-slots.json"  # under the repository root


@dataclass(frozen=True)
class ThreadChoice:
    """The threads a stage uses and the one line that says why."""

    threads: int
    reason: str

    def describe(self, stage: str) -> str:
        return f"{stage}: {self.threads} {_plural('thread', self.threads)} ({self.reason})"


def choose(setting: Union[int, str], cores: int, running: dict[str, int], busy: int = 0) -> ThreadChoice:
    """`auto`: the cores not `busy` with other work, divided by the stages running at once (this one included);
    a number as it is."""
    if setting != "auto":
        return ThreadChoice(int(setting), f"threads: {setting} in params.yaml, {cores} cores")
    total = max(1, sum(running.values()))
    busy = min(max(0, busy), cores - 1)
    share = max(1, (cores - busy) // total)
    who = " and ".join(f"{count} {_plural(kind, count)}" for kind, count in sorted(running.items()) if count)
    others = f", {busy} busy with other work" if busy else ""
    return ThreadChoice(share, f"{cores} {_plural('core', cores)}{others}, {who or '1 training'} running")


def runnable_elsewhere(samples: int = 3, interval: float = 0.01) -> int:
    """Processes (threads) the kernel has runnable besides this one: the fewest of a few looks, 10 ms apart.

    Linux's /proc/loadavg gives the count of the moment; the fewest of three
    ignores a process that only woke up briefly. 0 where there is no /proc.
    """
    counts = []
    for sample in range(samples):
        try:
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0
        counts.append(running - 1)  # this process, reading the file, is one of them
        if sample + 1 < samples:
            time.sleep(interval)
    return max(0, min(counts))


def _plural(kind: str, count: int) -> str:
    return kind if count == 1 else kind + "s"


def process_alive(pid: int) -> bool:
    """Whether process `pid` still exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class Slots:
    """The lock-guarded slot file: one entry per running stage process, {"pid": ..., "kind": ...}."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def _update(self, change) -> list[dict]:
        """Under an exclusive lock: read the live slots, apply `change` to them, write them back; return them."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
            handle.seek(0)
            try:
                slots = json.loads(handle.read() or "[]")
            except json.JSONDecodeError:  # a torn file from a crash mid-write counts as empty
                slots = []
            slots = [s for s in slots if isinstance(s, dict) and isinstance(s.get("pid"), int) and process_alive(s["pid"])]
            slots = change(slots)
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(slots))
            handle.flush()
        return slots

    def claim(self, kind: str, pid: int | None = None) -> dict[str, int]:
        """Take a slot for `pid` (this process by default); return the running stages by kind, this one included."""
        pid = os.getpid() if pid is None else pid
        slots = self._update(lambda live: [s for s in live if s["pid"] != pid] + [{"pid": pid, "kind": kind}])
        counts: dict[str, int] = {}
        for slot in slots:
            counts[slot.get("kind", "training")] = counts.get(slot.get("kind", "training"), 0) + 1
        return counts

    def release(self, pid: int | None = None) -> None:
        """Give up the slot of `pid` (this process by default)."""
        pid = os.getpid() if pid is None else pid
        self._update(lambda live: [s for s in live if s["pid"] != pid])


def claim_threads(setting: Union[int, str], root: Path, kind: str = "training", siblings: int = 1) -> ThreadChoice:
    """Hold a slot for this process until it exits and return its thread count.

    `siblings` counts this stage's own processes (the ranks of a distributed
    training), which may not all have claimed yet. Without a DVC repository at
    `root` there is nothing to share through: the stage counts only itself.
    A pinned number holds a slot too, so that `auto` stages beside it count it.
    """
    cores = available_cores()
    running = {kind: siblings}
    if (Path(root) / ".dvc").is_dir():
        slots = Slots(Path(root) / SLOTS_FILE)
        try:
            running = slots.claim(kind)
        except OSError:  # a read-only repository: count only this stage
            pass
        else:
            atexit.register(_release_quietly, slots)
            running[kind] = max(running.get(kind, 0), siblings)
    if setting != "auto":
        return choose(setting, cores, running)
    # Other slot holders are runnable too (or about to be): only what is beyond them is other work. A training
    # that starts beside one that has not claimed its slot yet sees it here, as busy, and leaves it a core.
    busy = runnable_elsewhere() - (sum(running.values()) - 1)
    return choose(setting, cores, running, busy)


def _release_quietly(slots: Slots) -> None:
    try:
        slots.release()
    except OSError:  # the next claim drops the dead slot anyway
        pass
