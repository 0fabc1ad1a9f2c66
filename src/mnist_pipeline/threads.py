"""How many compute threads a stage takes: its share of the cores, beside the other trainings running.

Each training (and evaluation) process holds a slot in a small JSON file under
the repository's .dvc/tmp while it runs. Parallel `dvc queue` workers run in
temporary copies of the repository, but DVC points DVC_ROOT at the user's
repository for every stage, so all of them see the one file. `threads: auto`
takes the machine's cores divided by the slots held; a slot whose process is
gone (killed, crashed) does not count and is dropped by the next claim.

Standard library only (and config, which is too at import): the stage claims its slot before torch starts any
parallel work.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
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
        return f"{stage}: {self.threads} thread{'s' if self.threads != 1 else ''} ({self.reason})"


def choose(setting: Union[int, str], cores: int, running: dict[str, int]) -> ThreadChoice:
    """`auto`: the cores divided by the stages running at once (this one included); a number as it is."""
    if setting != "auto":
        return ThreadChoice(int(setting), f"threads: {setting} in params.yaml, {cores} cores")
    total = max(1, sum(running.values()))
    share = max(1, cores // total)
    who = " and ".join(f"{count} {_plural(kind, count)}" for kind, count in sorted(running.items()) if count)
    return ThreadChoice(share, f"{cores} core{'s' if cores != 1 else ''}, {who or '1 training'} running")


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
    return choose(setting, cores, running)


def _release_quietly(slots: Slots) -> None:
    try:
        slots.release()
    except OSError:  # the next claim drops the dead slot anyway
        pass
