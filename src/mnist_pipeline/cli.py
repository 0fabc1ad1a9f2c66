"""What every stage script shares: one-line errors and a non-zero exit."""

from __future__ import annotations

import sys
from typing import Callable

from mnist_pipeline.errors import PipelineError

EXIT_USER_ERROR = 2


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main; a PipelineError becomes one line on stderr and exit status 2."""
    try:
        main()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
