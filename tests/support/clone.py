"""The repository as a new user has it, for the tests and the benchmarks alike: its files as a clone would hold
them, and a user's shell to run commands in. Standard library only: the benchmarks import it outside pytest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def copy_files(destination: Path) -> Path:
    """The working tree's files a clone would have (tracked, and untracked but not ignored) copied to `destination`."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():  # a file deleted but not yet staged is listed, and absent
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def user_environment(mirror: Path, author: str, email: str, **extra: str) -> dict[str, str]:
    """A user's shell: the venv's tools first on PATH, MNIST_MIRROR (the caller's own, else `mirror`), no DVC or
    MLflow variables left over from ours, and git commits by `author` <`email`>."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MNIST_MIRROR", str(mirror))
    env["DVC_NO_ANALYTICS"] = "1"
    for role in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{role}_NAME"] = author
        env[f"GIT_{role}_EMAIL"] = email
    env.update(extra)
    return env
