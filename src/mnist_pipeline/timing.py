"""Where a stage's wall time goes: named phases from the process's start, for benchmarks/overhead.py.

Standard library only, so that timing a stage costs nothing it would not pay anyway.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

TIMINGS_ENV = "MNIST_PIPELINE_TIMINGS"  # a file: each stage appends one JSON line of its phases


def process_start() -> float:
    """The wall-clock time (time.time()) this process started, so that interpreter start-up and imports count.

    Linux gives it in /proc (to 1/100 s); elsewhere the first call stands in for it.
    """
    global _STARTED
    if _STARTED is None:
        _STARTED = _linux_process_start() or time.time()
    return _STARTED


_STARTED: float | None = None


def _linux_process_start() -> float | None:
    try:
        # Field 22 of /proc/self/stat is the start time in clock ticks after boot; the name
        # (field 2) may hold spaces, so count from the closing parenthesis.
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


class StageClock:
    """Splits a stage's wall time into phases: each `mark(name)` ends the phase since the previous mark.

    The first mark's phase starts when the process did, so it holds the
    interpreter's start-up and the stage's imports.
    """

    def __init__(self, stage: str):
        self.stage = stage
        self.phases: dict[str, float] = {}
        self._last = process_start()

    def mark(self, phase: str) -> None:
        """End the current phase, naming it `phase` (a repeated name adds up)."""
        now = time.time()
        self.phases[phase] = self.phases.get(phase, 0.0) + max(0.0, now - self._last)
        self._last = now

    def total(self) -> float:
        """Seconds since the process started."""
        return time.time() - process_start()

    def report(self) -> None:
        """Append this stage's phases to the file MNIST_PIPELINE_TIMINGS names; nothing when it is unset."""
        path = os.environ.get(TIMINGS_ENV)
        if not path:
            return
        record = {
            "stage": self.stage,
            "total": round(self.total(), 3),
            "phases": {name: round(seconds, 3) for name, seconds in self.phases.items()},
        }
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
