"""What every stage script shares: one-line errors and a non-zero exit, and a quick exit after success."""

from __future__ import annotations

import atexit
import os
import signal
import sys
from typing import Callable

from mnist_pipeline.config import ConfigError, exp_run_hint
from mnist_pipeline.errors import PipelineError

EXIT_USER_ERROR = 2

_succeeded = False


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main; a PipelineError becomes one line on stderr and exit status 2."""
    global _succeeded
    # SIGTERM (a queue worker stopped, `kill`) unwinds like Ctrl-C, so runs and files are closed properly.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        main()
    except PipelineError as exc:
        hint = exp_run_hint() if isinstance(exc, ConfigError) else ""
        print(f"error: {exc}{hint}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    _succeeded = True


def _end_without_teardown() -> None:
    """After a successful stage, end the process once Python's exit has done all but tearing down its modules.

    With torch and MLflow loaded, that teardown takes most of a second of each stage's wall time
    (docs/performance.md), freeing memory the operating system frees anyway. Registered when this
    module is first imported (mnist_pipeline/__init__.py imports it, before any stage imports torch
    or MLflow), so it runs last of the exit handlers: by then Python has stopped and joined the other
    threads (MLflow's asynchronous logging included) and run every other handler, MLflow's among
    them. After a failure it does nothing, and the exit status stays the error's.
    """
    if not _succeeded:
        return
    if "logging" in sys.modules:  # its handler may have been registered before this one: flush it here
        import logging

        logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


atexit.register(_end_without_teardown)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
