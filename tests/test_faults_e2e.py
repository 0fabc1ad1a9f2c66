"""Mistakes and faults under the real dvc: clear one-line errors, nothing produced is lost or corrupted.

Steps of one story on one copy of the repository, in file order.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import MNIST_MIRROR, requires_mnist_mirror
from dvc_project import all_runs, copy_project, environment, run, stages_run, update_params

pytestmark = [pytest.mark.e2e, requires_mnist_mirror()]

OUTPUTS = (
    "models/model.pt",
    "metrics/train.json",
    "metrics/history.csv",
    "metrics/eval.json",
    "metrics/confusion.csv",
    "metrics/mlflow_run.json",
    "plots/accuracy.png",
)


def snapshot(project: Path) -> dict[str, str]:
    """MD5 of every pipeline output, to prove a failed run left them alone."""
    return {name: hashlib.md5((project / name).read_bytes()).hexdigest() for name in OUTPUTS}


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def project(prepared_project, tmp_path_factory):
    return copy_project(prepared_project, tmp_path_factory.mktemp("faults"))


def test_exp_run_with_a_bad_param_fails_with_one_line_and_keeps_every_output(project):
    before, runs_before = snapshot(project), len(all_runs(project))
    failed = run(project, "dvc", "exp", "run", "-S", "lr=-1", check=False)
    assert failed.returncode != 0
    # DVC wrote lr: -1 into params.yaml and leaves it there; the line says how to get the committed file back
    # (git's index may be left stale by DVC, which the line then says too).
    restore = "git show HEAD:params.yaml > params.yaml"
    lines = [
        f"error: lr: got -1.0; must be > 0.0 and <= 10.0 (dvc exp run -S wrote this into params.yaml{stale}; "
        f"{restore} restores the committed one)\n"
        for stale in ("", ", though git's index is stale and git status does not show it")
    ]
    assert any(line in failed.stderr for line in lines), failed.stderr
    assert "epoch 1/" not in failed.stderr + failed.stdout  # stopped before any training
    assert snapshot(project) == before
    assert len(all_runs(project)) == runs_before

    # The command the line gives works at once, and the next experiment no longer fails on lr (the
    # download stage, forced, is the cheapest stage that reads all of params.yaml).
    run(project, "sh", "-c", restore)
    committed = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=project, capture_output=True, check=True).stdout
    assert (project / "params.yaml").read_bytes() == committed
    run(project, "dvc", "exp", "run", "-S", "batch_size=32", "-f", "download")
    assert snapshot(project) == before
    (project / "params.yaml").write_bytes(committed)


def test_a_dead_tracking_server_fails_before_training_and_keeps_every_output(project):
    before = snapshot(project)
    update_params(project, {"lr": 0.02})
    port = dead_port()
    failed = run(project, "dvc", "repro", check=False, env=environment(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}"))
    assert failed.returncode != 0
    assert (
        f"error: MLflow store http://127.0.0.1:{port}: unreachable (Connection refused); "
        "start it, or fix or unset MLFLOW_TRACKING_URI\n"
    ) in failed.stderr
    assert "epoch 1/" not in failed.stderr + failed.stdout
    assert snapshot(project) == before
    run(project, "git", "checkout", "params.yaml")


def test_a_damaged_store_fails_before_training_with_one_line_and_keeps_every_output(project, tmp_path):
    before = snapshot(project)
    store = project / "mlflow.db"
    shutil.copy2(store, tmp_path / "mlflow.db")
    store.write_bytes(store.read_bytes()[: store.stat().st_size // 2])  # as a copy cut short would be
    update_params(project, {"lr": 0.02})
    failed = run(project, "dvc", "repro", check=False)
    assert failed.returncode != 0
    assert (
        f"error: MLflow store sqlite:///{project.resolve() / 'mlflow.db'}: database disk image is malformed; "
        "move it aside or restore a backup\n"
    ) in failed.stderr
    assert "Traceback" not in failed.stderr
    assert "epoch 1/" not in failed.stderr + failed.stdout
    assert snapshot(project) == before
    shutil.copy2(tmp_path / "mlflow.db", store)
    run(project, "git", "checkout", "params.yaml")


def test_a_damaged_mirror_is_refused_and_nothing_bad_enters_the_cache(project, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(MNIST_MIRROR, damaged)
    name = "t10k-images-idx3-ubyte.gz"
    content = bytearray((damaged / name).read_bytes())
    content[5000] ^= 0xFF  # one flipped byte
    (damaged / name).write_bytes(bytes(content))
    bad_md5 = hashlib.md5(content).hexdigest()

    failed = run(project, "dvc", "repro", "-f", "download", check=False, env=environment(MNIST_MIRROR=str(damaged)))
    assert failed.returncode != 0
    assert (
        f"error: {name}: MD5 mismatch (expected 9fb629c4189551a2d022fa330f9573f3, got {bad_md5}); "
        f"the source {damaged} has a damaged or wrong file\n"
    ) in failed.stderr
    assert not (project / "data" / "mnist" / name).exists()
    cached = {p.parent.name + p.name for p in (project / ".dvc" / "cache").rglob("*") if p.is_file()}
    assert bad_md5 not in cached

    # DVC restores the verified files from its run-cache (or downloads them again); the data is the
    # same as before, so nothing downstream reruns.
    fixed = run(project, "dvc", "repro")
    assert stages_run(fixed.stdout) in ([], ["download"])
    assert (project / "data" / "mnist" / name).read_bytes() == (MNIST_MIRROR / name).read_bytes()
    assert run(project, "dvc", "status").stdout.strip() == "Data and pipelines are up to date."
