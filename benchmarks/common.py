"""What the benchmarks share: where things are, the machine's description, the results block in the docs,
and a fresh copy of the repository to time commands in.

Imports no torch, so that the benchmarks that time commands load nothing heavy (a training is set up as the
train stage sets it up with mnist_pipeline.training's prepare and compute_for).
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mnist_pipeline.config import DataConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
# The test-data generators (user_digits, font_digits, hostile_images) live with the tests, which use them most.
sys.path.insert(0, str(REPO_ROOT / "tests" / "support"))
RESULTS = REPO_ROOT / "benchmarks" / "results"
DOCS = REPO_ROOT / "docs" / "performance.md"
MEAN, STD = DataConfig.mean, DataConfig.std  # the training set's pixel statistics, as params.yaml has them
DATA = REPO_ROOT / "data" / "mnist"  # the pipeline's copy (`dvc repro download`)
MIRROR = Path(os.environ.get("MNIST_MIRROR") or REPO_ROOT.parent / "shared" / "data" / "mnist")


def machine() -> str:
    """The CPU model, its cores and Python's version (and torch's and the GPU, where torch is loaded)."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")
            ),
            cpu,
        )
    text = f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}"
    if "torch" in sys.modules:
        import torch

        gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
        text += f"; torch {torch.__version__}{gpu}"
    return text


def write_block(lines: list[str], mark: str, doc: Path = DOCS, fenced: bool = True) -> None:
    """Put `lines` between the two `mark` comments of `doc` (docs/performance.md), as a code block if `fenced`."""
    parts = doc.read_text().split(mark) if doc.exists() else []
    if len(parts) != 3:
        sys.exit(f"error: {doc}: expected two {mark} markers around the figures")
    body = "```\n" + "\n".join(lines) + "\n```" if fenced else "\n".join(lines)
    doc.write_text(parts[0] + mark + "\n" + body + "\n" + mark + parts[2])
    print(f"wrote the figures into {doc.relative_to(REPO_ROOT)}")


def check_data(folder: Path) -> None:
    """Exit with one line when `folder` lacks the four MNIST files."""
    names = [f"{p}-{k}-idx{d}-ubyte.gz" for p in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))]
    missing = [name for name in names if not (folder / name).exists()]
    if missing:
        sys.exit(f"error: {folder}: {', '.join(missing)} missing; run `dvc repro download` or pass --data")


# Commands timed as a user types them, in a fresh copy of the repository.


def environment(**extra: str) -> dict[str, str]:
    """A user's shell: the venv's tools first, the local MNIST mirror, no DVC or MLflow variables of ours."""
    from clone import user_environment  # tests/support, on the path once this module is imported

    return user_environment(MIRROR, "benchmark", "benchmark@example.invalid", **extra)


def copy_repository(destination: Path, revision: str | None = None) -> Path:
    """The repository's files as a clone would have them, committed as a new repository.

    Without `revision`, the working tree's (tracked and untracked-not-ignored files); with one, that commit's.
    """
    destination.mkdir(parents=True)
    if revision:
        archive = subprocess.run(["git", "archive", revision], cwd=REPO_ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(destination)], input=archive, check=True)
    else:
        from clone import copy_files  # tests/support, on the path once this module is imported

        copy_files(destination)
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "benchmark baseline"]):
        subprocess.run(command, cwd=destination, env=environment(), check=True, capture_output=True)
    return destination


def start_server(arguments: list[str], code: Path = REPO_ROOT) -> tuple[subprocess.Popen, int]:
    """predict.py --serve with `arguments` and the code in `code`, started in the repository (its params, store and
    checkpoint) on a free port; (process, port) once it answers. Its stderr goes to a temporary file, read if it
    exits early: a pipe nobody reads while it serves could fill and stall it."""
    from servers import free_port  # tests/support, on the path once this module is imported

    port = free_port()
    # The server keeps its own handle on the (unlinked) file; this one is only read while waiting for it.
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            [sys.executable, str(code / "predict.py"), "--serve", "--port", str(port), *arguments],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(code / "src")},
            stdout=subprocess.DEVNULL,
            stderr=errors,
            start_new_session=True,
        )
        deadline = time.monotonic() + 180
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/model")
                connection.getresponse().read()
                return process, port
            except OSError:
                if process.poll() is not None:
                    errors.seek(0)
                    sys.exit(
                        f"error: predict.py --serve {' '.join(arguments)} exited: {errors.read().decode()[-2000:]}"
                    )
                if time.monotonic() > deadline:
                    process.kill()
                    sys.exit("error: the server did not answer within 3 minutes")
                time.sleep(0.3)


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Wall seconds of `command`; exits with its output when it fails."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(command)} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds


def last_train_seconds(project: Path) -> float:
    """The train_seconds metric of the newest MLflow run (read with sqlite3: the benchmark imports no MLflow)."""
    with sqlite3.connect(project / "mlflow.db") as db:
        row = db.execute(
            "SELECT m.value FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid "
            "WHERE m.key = 'train_seconds' ORDER BY r.start_time DESC LIMIT 1"
        ).fetchone()
    return float(row[0])


# Results: saved as JSON under benchmarks/results/, shown, and with --update-docs written into the docs.


def code_version() -> dict[str, str]:
    """The commit the measured code is, and whether the working tree had uncommitted changes to it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "working_tree": "with uncommitted changes" if dirty else "clean",
    }


def publish(
    summary: dict, out: Path, lines: list[str], mark: str, *, save: bool, update_docs: bool, doc: Path = DOCS
) -> None:
    """Write `summary` to `out` (when it was just measured), print `lines`, and put them into `doc` if asked."""
    if save:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))
    if update_docs:
        write_block(lines, mark, doc)
