"""Shared fixtures: where the real MNIST mirror is, what a test needs installed, small IDX files, repro'd projects."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

pytest_plugins = ["pytester"]  # test_conftest.py runs small suites through require()

REPO_ROOT = Path(__file__).resolve().parents[1]
# CI and the developers' machines keep the four original files in ../shared/data/mnist.
MNIST_MIRROR = Path(os.environ.get("MNIST_MIRROR") or REPO_ROOT.parent / "shared" / "data" / "mnist")


def on_ci() -> bool:
    """Whether this is a CI run (CI=true, which .ci/run sets): there, nothing a test needs may be missing."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require(present: object, what: str, how_to_fix: str) -> None:
    """Go on when `present` is true; otherwise skip the test on a developer's machine, and fail it under CI.

    Every test that needs something installed outside the venv (the MNIST
    mirror, Chromium, the Vega scripts, PostgreSQL, a C compiler) goes through
    here, so a CI host that lacks one fails with one line naming it instead of
    passing having run nothing.
    """
    if present:
        return
    message = f"missing {what}: {how_to_fix}"
    if on_ci():
        pytest.fail(f"{message} (CI=true: CI runs every test)", pytrace=False)
    pytest.skip(message)


def prerequisite(present: object, what: str, how_to_fix: str) -> pytest.MarkDecorator:
    """require() as a mark, for a test or a module's pytestmark: checked before the test's fixtures are set up."""
    return pytest.mark.prerequisite(present=bool(present), what=what, how_to_fix=how_to_fix)


def pytest_configure(config):
    config.addinivalue_line("markers", "prerequisite(present, what, how_to_fix): see conftest.require")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # Before fixtures: a module without its prerequisite must not start a minute of `dvc repro` first.
    for mark in item.iter_markers("prerequisite"):
        require(**mark.kwargs)


def requires_mnist_mirror() -> pytest.MarkDecorator:
    """The four original MNIST files at MNIST_MIRROR (every end-to-end test reads them)."""
    names = (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    )
    missing = [n for n in names if not (MNIST_MIRROR / n).is_file()]
    return prerequisite(
        not missing,
        f"the MNIST mirror at {MNIST_MIRROR}",
        "put the four original .gz files there, or set MNIST_MIRROR to a folder that has them",
    )


def c_compiler() -> str | None:
    """The C compiler the project's kernels are built with ($CC, else cc), as kernels.build finds it; None if absent."""
    return shutil.which(os.environ.get("CC") or "cc")


def requires_c_compiler() -> pytest.MarkDecorator:
    return prerequisite(
        c_compiler(),
        f"a C compiler (`{os.environ.get('CC') or 'cc'}`) for the project's kernels",
        "apt-get install gcc (as .ci/run does), or set CC",
    )


def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool = True) -> Path:
    """Write `array` (uint8) as an IDX file, the way the MNIST files are laid out."""
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
    return path


def untrained_checkpoint(path: Path) -> Path:
    """A complete checkpoint of the reference network, untrained (seed 0): what predict and serve load."""
    import torch

    from mnist_pipeline.checkpoint import save_checkpoint
    from mnist_pipeline.config import parse_config
    from mnist_pipeline.model import ModelConfig, build_model
    from mnist_pipeline.records import EpochResult

    torch.manual_seed(0)
    model = build_model(ModelConfig())
    save_checkpoint(
        path,
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
        generator=torch.Generator(),
        model_config=ModelConfig(),
        config=parse_config({"epochs": 1}).to_dict(),
        history=[EpochResult(1, 0.5, 0.4, 0.9)],
    )
    return path


def logged_project_model(experiment: str):
    """(model URI, network) of the untrained reference network logged as the train stage logs it (runs.log_model),
    in a run of `experiment` in the current MLflow store (local_store)."""
    import torch

    from mnist_pipeline.model import DigitClassifier, ReferenceCNN
    from mnist_pipeline.tracking import runs, store

    torch.manual_seed(0)
    network = DigitClassifier(ReferenceCNN(), 0.1307, 0.3081).eval()
    _, experiment_id = store.connect(experiment)
    with runs.training_run(experiment_id, {}):
        return runs.log_model(network, np.zeros((2, 1, 28, 28), np.float32)), network


def logged_planted_model(experiment: str, planted: Path) -> str:
    """The URI of a pickled MLflow PythonModel whose load_context writes `planted`: code its author runs wherever
    it is loaded (issue 33's probe)."""
    import mlflow
    import mlflow.pyfunc

    from mnist_pipeline.tracking import store

    class Planted(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            Path(planted).write_text("planted")

        def predict(self, context, model_input, params=None):
            return model_input

    _, experiment_id = store.connect(experiment)
    with mlflow.start_run(experiment_id=experiment_id):
        return mlflow.pyfunc.log_model(name="model", python_model=Planted(), pip_requirements=[]).model_uri


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


@pytest.fixture
def local_store(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store in a fake repository root, as DVC would point at it (tests of the MLflow modules)."""
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for var in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(var, raising=False)
    yield tmp_path
    import mlflow  # here, not at the top: the suite's collection stays quick

    mlflow.end_run()
