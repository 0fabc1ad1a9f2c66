"""What every stage script shares: one-line errors and a non-zero exit."""

from __future__ import annotations

import signal
import sys
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


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
