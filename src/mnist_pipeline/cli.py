"""What every stage script shares: one-line errors and a non-zero exit, and a quick exit after success."""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from typing import Callable

from mnist_pipeline.config import ConfigError, exp_run_hint
from mnist_pipeline.errors import PipelineError

EXIT_USER_ERROR = 2


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main; a PipelineError becomes one line on stderr and exit status 2."""
    # SIGTERM (a queue worker stopped, `kill`) unwinds like Ctrl-C, so runs and files are closed properly.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        main()
    except PipelineError as exc:
        hint = exp_run_hint() if isinstance(exc, ConfigError) else ""
        print(f"error: {exc}{hint}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    exit_without_teardown()


def exit_without_teardown() -> None:
    """End the process as Python's exit would, but without tearing down every module one by one.

    With torch and MLflow loaded, that teardown took about a second of each
    stage's wall time on the 2-core machine (docs/performance.md), freeing
    memory the operating system frees anyway. Everything else an exit does
    still happens first, in the same order: other threads are waited for,
    exit handlers run (MLflow's and logging's among them), output is flushed.
    """
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # noqa: SLF001 (the interpreter's own list; there is no public way to run it)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
