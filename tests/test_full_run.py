"""The certificate: the committed params through the whole pipeline give the committed bytes, and the tutorial's accuracy."""

import subprocess

import pytest

from mnist_pipeline.reports import read_history

from conftest import requires_c_compiler, requires_mnist_mirror
from dvc_project import all_runs, environment, lock_outs, make_project, run, stages_run

# The tutorial's published test accuracy per epoch (%).
TUTORIAL = [97.0, 97.99, 98.13, 98.38, 98.46, 98.58, 98.69, 98.69, 98.49, 98.49]
RUN_ID_FILE = "metrics/mlflow_run.json"  # the one file a rerun may change: the id of its MLflow run


@pytest.mark.full
@pytest.mark.e2e
@requires_mnist_mirror()
@requires_c_compiler()
def test_a_fresh_clones_repro_gives_the_committed_bytes_and_the_tutorials_accuracy(tmp_path):
    """What `./setup.sh` runs after installing, in a copy of the repository as a clone has it: `dvc repro` of the
    committed params.yaml, on whatever CPU this is (a GPU hidden: the committed results are the CPU's)."""
    project = make_project(tmp_path / "clone", params=None)
    committed_lock = (project / "dvc.lock").read_text()
    done = run(project, "dvc", "repro", env=environment(CUDA_VISIBLE_DEVICES=""))
    # Not evaluate: the model comes out byte for byte the committed one, whose committed evaluation DVC keeps.
    # register runs all the same (a clone has no models/registered.json), so the new run gets that evaluation.
    assert stages_run(done.stdout) == ["download", "train", "plot", "register"]
    assert "train: the reference network in the project's own CPU kernels (kernels: auto)" in done.stdout
    assert "register: best so far: registered as mnist-cnn version 1 (alias champion)" in done.stdout
    (mlflow_run,) = all_runs(project)
    assert mlflow_run.data.metrics["eval_accuracy"] == mlflow_run.data.metrics["test_accuracy"]

    # Every output hash dvc.lock records (the checkpoint, the metrics, the data and the PNGs) is the committed one,
    # and git sees nothing else changed: dvc.lock and metrics/ are byte for byte what the repository holds.
    assert lock_outs((project / "dvc.lock").read_text()) == lock_outs(committed_lock)
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=project, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert [line for line in status if line[3:] != RUN_ID_FILE] == []

    # And it is the tutorial's training: its accuracy table within noise, epoch by epoch.
    accuracies = [round(100 * row.test_accuracy, 2) for row in read_history(project / "metrics" / "history.csv")]
    print("test accuracy per epoch (%):", accuracies, "tutorial:", TUTORIAL)
    assert all(abs(ours - theirs) <= 0.5 for ours, theirs in zip(accuracies, TUTORIAL, strict=True)), accuracies
    assert accuracies[-1] >= 98.4
