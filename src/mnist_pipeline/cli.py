"""What every stage script shares: one-line errors and a non-zero exit, a quick exit after success, a second core."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    from concurrent.futures import Future

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


@contextlib.contextmanager
def in_forked_process(function: Callable[..., Any], *args: Any) -> Iterator["Future"]:
    """Start `function(*args)` in a child forked from this process as it is now; yield its Future.

    For two halves of a stage that are each bound by Python (imports, plotting), which one
    process runs one after the other under its interpreter lock: a child forked before the
    heavy imports starts at once and runs on another core. Its result, or its exception, comes
    back pickled; the block waits for the child before it ends.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool:
        yield pool.submit(function, *args)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
