"""What every stage script shares: one-line errors (with a way back from `dvc exp run -S`), a non-zero exit,
and a quick exit after success."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from mnist_pipeline.config import PARAMS_FILE, ConfigError, parse_config
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


def exp_run_hint(path: str | Path = PARAMS_FILE) -> str:
    """How to get the committed params.yaml back after `dvc exp run -S` wrote a bad value into it, or "".

    DVC writes -S values into the workspace's params.yaml before the stages
    run, and leaves them there when a stage fails. The hint is given only under
    a workspace `dvc exp run` (DVC sets DVC_EXP_NAME; --queue and --temp runs
    change a copy, whose directory is not DVC_ROOT) and only when the committed
    params.yaml differs and is valid. It runs git: call it on the error path only.
    """
    root = os.environ.get("DVC_ROOT")
    if not os.environ.get("DVC_EXP_NAME") or (root and Path(root).resolve() != Path.cwd().resolve()):
        return ""
    committed = _git("show", f"HEAD:{path}")
    try:
        current = Path(path).read_bytes()
    except OSError:  # deleted: not something -S did
        return ""
    if committed is None or committed.returncode != 0 or committed.stdout == current:
        return ""
    import yaml

    try:
        parse_config(yaml.safe_load(committed.stdout))
    except (ConfigError, yaml.YAMLError):
        return ""  # restoring it would not help
    # DVC's git operations can leave git's index with the new file's size and time beside the old
    # content, so that git status shows no change and `git checkout params.yaml` does nothing;
    # `git show ... >` writes the file whatever the index says.
    unseen = ", though git's index is stale and git status does not show it" if _index_is_stale(path) else ""
    return f" (dvc exp run -S wrote this into {path}{unseen}; git show HEAD:{path} > {path} restores the committed one)"


def _git(*args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _index_is_stale(path: str | Path) -> bool:
    """Whether git reports `path` unchanged although its content is not the blob in git's index."""
    staged = _git("ls-files", "-s", "--", str(path))  # b"100644 <blob> 0\tparams.yaml"
    content = _git("hash-object", "--", str(path))
    diff = _git("diff", "--quiet", "--", str(path))  # exit status 0: git sees no change
    if staged is None or content is None or diff is None or not staged.stdout or content.returncode != 0:
        return False
    return staged.stdout.split()[1] != content.stdout.strip() and diff.returncode == 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
