"""Shared fixtures: where the real MNIST mirror is, small IDX files written on the fly, repro'd projects."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# CI and the developers' machines keep the four original files in ../shared/data/mnist.
MNIST_MIRROR = Path(os.environ.get("MNIST_MIRROR") or REPO_ROOT.parent / "shared" / "data" / "mnist")


def requires_mnist_mirror():
    """Skip (with the reason) when the local copy of MNIST is not there."""
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    missing = [n for n in names if not (MNIST_MIRROR / n).is_file()]
    return pytest.mark.skipif(bool(missing), reason=f"no local MNIST mirror at {MNIST_MIRROR} (set MNIST_MIRROR)")


def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool = True) -> Path:
    """Write `array` (uint8) as an IDX file, the way the MNIST files are laid out."""
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
    return path


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    """A folder with the four MNIST file names holding 20 train and 10 test random images."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "mirror"
    folder.mkdir()
    for prefix, n in (("train", 20), ("t10k", 10)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), 2051)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)), 2049)
    return folder


@pytest.fixture(scope="session")
def prepared_project(tmp_path_factory):
    """One copy of the repository after `dvc repro` on the test slice, shared by the end-to-end modules.

    A first repro costs most of a minute on 2 cores; a module that starts from one takes its own
    `copy_project` of this instead (seconds). Nothing may change this one.
    """
    from dvc_project import prepare_project

    return prepare_project(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="session")
def experimented_project(prepared_project, tmp_path_factory):
    """A copy of prepared_project after `dvc exp run -S lr=0.05`: two MLflow runs, lr 0.01 and 0.05. Shared likewise."""
    from dvc_project import Prepared, copy_project, run

    project = copy_project(prepared_project, tmp_path_factory.mktemp("experimented"))
    return Prepared(project, run(project, "dvc", "exp", "run", "-S", "lr=0.05"))
