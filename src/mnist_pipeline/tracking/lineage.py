"""A run's lineage in DVC's own terms: the data's MD5 as dvc.lock records it, the lock a repro leaves, the way back.

Standard library and yaml only: the stages read DVC's files without loading DVC.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

LOCK_FILE = "dvc.lock"
DATA_STAGE = "download"
REPRODUCE_DIR = "reproduce"  # a run's artifacts that bring it back: params.yaml (train) and dvc.lock (register)


def repo_root() -> Path:
    """The repository the run belongs to.

    DVC sets DVC_ROOT for every stage, and under `dvc exp run --queue` or
    `--temp` it points at the user's repository, not the temporary copy the
    stage runs in: that keeps every experiment in the one store (and one
    compute-slot file).
    """
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


@dataclass(frozen=True)
class DataDigest:
    """DVC's MD5 of the data folder (`<md5>.dir`) and where it came from: "dvc.lock" or "files"."""

    md5: str
    origin: str
    note: str | None = None  # why it was computed from the files, in one line; None when read from dvc.lock


def locked_md5(lock_path: Path, data_dir: str) -> tuple[str | None, str]:
    """The MD5 dvc.lock records for the download stage's output `data_dir`, or None and why not."""
    try:
        lock = yaml.safe_load(Path(lock_path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"no {lock_path}"
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return None, f"{lock_path} is unreadable ({type(exc).__name__})"
    stage = (lock.get("stages") or {}).get(DATA_STAGE) if isinstance(lock, dict) else None
    if not isinstance(stage, dict):
        return None, f"{lock_path} has no {DATA_STAGE} stage"
    wanted = Path(data_dir).as_posix().rstrip("/")
    for out in stage.get("outs") or []:
        if isinstance(out, dict) and str(out.get("path", "")).rstrip("/") == wanted and out.get("md5"):
            return str(out["md5"]), ""
    return None, f"{lock_path}'s {DATA_STAGE} stage does not list {wanted}"


def folder_md5(folder: Path) -> str:
    """DVC 3's MD5 of a folder: the MD5 of the sorted JSON list of its files' MD5s and paths, plus ".dir"."""
    folder = Path(folder)
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.md5()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        entries.append({"md5": digest.hexdigest(), "relpath": path.relative_to(folder).as_posix()})
    entries.sort(key=lambda entry: entry["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def data_digest(data_dir: str, lock_path: Path = Path(LOCK_FILE)) -> DataDigest:
    """The data's MD5 from dvc.lock; computed from the files (the same value when they match) when the lock lacks it."""
    md5, why_not = locked_md5(lock_path, data_dir)
    if md5:
        return DataDigest(md5, LOCK_FILE)
    return DataDigest(
        folder_md5(Path(data_dir)), "files", f"{why_not}: the data's MD5 is computed from the files in {data_dir}"
    )


def reproduce_command(exp_name: str | None, commit: str | None) -> str:
    """The one command that brings a run's code, params and data back."""
    if exp_name:
        return f"dvc exp apply {exp_name}"
    if commit:
        return f"git checkout {commit} && (dvc pull || dvc repro)"
    return "dvc repro"


SPLIT_PREFIXES = {"training": "train", "test": "t10k"}  # MNIST's file names: train-*.gz, t10k-*.gz


def split_files(data_dir: str) -> dict[str, tuple[str, ...]]:
    """The files of each split (MLflow's dataset contexts `training` and `test`) in data_dir."""
    return {
        context: tuple(sorted(p.name for p in Path(data_dir).glob(f"{prefix}-*")))
        for context, prefix in SPLIT_PREFIXES.items()
    }
