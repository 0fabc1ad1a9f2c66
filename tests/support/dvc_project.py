"""Helpers for end-to-end tests: a copy of this repository as its own git repo, and commands run in it."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from clone import copy_files, user_environment
from conftest import MNIST_MIRROR

# Two epochs on 2,000 training images, scored on the whole test set: only whole-test-set runs may become
# the registry's champion (tracking.promote_if_best), and the end-to-end tests look at the champion.
# On the CPU on any machine, a GPU one too: what the tests check (threads, shards, the same bits on any CPU)
# is the CPU's; tools/gpu_check.sh runs the pipeline on a GPU.
SMALL = {"epochs": 2, "device": "cpu", "data": {"max_train_images": 2000, "max_test_images": None}}


def environment(**overrides: str) -> dict[str, str]:
    """The environment of a user's shell: the venv on PATH, the local MNIST mirror, no leftovers of ours."""
    return user_environment(MNIST_MIRROR, "pipeline tests", "tests@example.invalid", **overrides)


def run(
    project: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a command in the project as a user would, and fail with its output if it fails."""
    done = subprocess.run(args, cwd=project, env=env or environment(), capture_output=True, text=True, timeout=900)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


def stages_run(output: str) -> list[str]:
    """The stages DVC says it ran, in order."""
    return re.findall(r"Running stage '([\w-]+)'", output)


def update_params(project: Path, changes: dict) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            params[key].update(value)
        else:
            params[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def make_project(destination: Path, params: dict | None = SMALL) -> Path:
    """A git repository holding this repository's files as a fresh clone would (ignored files left out), with
    `params` over params.yaml (the test slice; None: the repository's own, as committed)."""
    copy_files(destination)
    if params:
        update_params(destination, params)
    run(destination, "git", "init", "-q")
    run(destination, "git", "add", "-A")
    run(destination, "git", "commit", "-qm", "baseline")
    return destination


@dataclass(frozen=True)
class Prepared:
    """A project after a command that costs most of a minute (`dvc repro`, `dvc exp run`), and what it printed."""

    path: Path
    output: subprocess.CompletedProcess


def prepare_project(destination: Path) -> Prepared:
    """make_project, then `dvc repro`: the starting point of most end-to-end modules (conftest shares one)."""
    make_project(destination)
    return Prepared(destination, run(destination, "dvc", "repro"))


def copy_project(prepared: Prepared, destination: Path) -> Path:
    """A copy of a prepared project (`cp -a`: git, DVC cache, MLflow store) that a test may change freely.

    MLflow records where artifacts live as absolute paths (file:///<project>/mlartifacts/...), so the copy's
    store is rewritten to name the copy: it logs to and loads from its own folder, never the original's.
    """
    destination.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", f"{prepared.path}/.", str(destination)], check=True)
    store = destination / "mlflow.db"
    if store.exists():
        _relocate_store(store, str(prepared.path), str(destination))
    return destination


def _relocate_store(store: Path, old: str, new: str) -> None:
    """Replace the project path `old` by `new` in every text column of an MLflow SQLite store."""
    with contextlib.closing(sqlite3.connect(store)) as db, db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for _, column, kind, *_ in db.execute(f'PRAGMA table_info("{table}")').fetchall():
                if any(word in kind.upper() for word in ("CHAR", "TEXT", "CLOB")):
                    db.execute(
                        f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) WHERE instr("{column}", ?) > 0',
                        (old, new, old),
                    )
        leftovers = [
            table
            for table in tables
            for _, column, kind, *_ in db.execute(f'PRAGMA table_info("{table}")').fetchall()
            if db.execute(
                f'SELECT count(*) FROM "{table}" WHERE instr(CAST("{column}" AS TEXT), ?) > 0', (old,)
            ).fetchone()[0]
        ]
    assert not leftovers, f"{store} still names {old} in {leftovers}"


def mlflow_client(project: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def all_runs(project: Path):
    client = mlflow_client(project)
    experiment = client.get_experiment_by_name("mnist-cnn")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def predicts_like_evaluate(model, project: Path, images: int = 10000) -> float:
    """Accuracy of a logged MLflow model on the test images; asserts it equals the evaluate stage's."""
    import json

    import numpy as np

    from mnist_pipeline.data import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_idx

    pixels = read_idx(MNIST_MIRROR / "t10k-images-idx3-ubyte.gz", IDX_IMAGES_MAGIC)[:images]
    labels = read_idx(MNIST_MIRROR / "t10k-labels-idx1-ubyte.gz", IDX_LABELS_MAGIC)[:images]
    probabilities = model.predict(pixels.reshape(-1, 1, 28, 28).astype(np.float32))
    assert probabilities.shape == (images, 10)
    accuracy = float((probabilities.argmax(axis=1) == labels).mean())
    evaluation = json.loads((project / "metrics" / "eval.json").read_text())
    assert accuracy == pytest.approx(evaluation["test_accuracy"], abs=1e-9)
    return accuracy


def check_lineage(project: Path, run_id: str, lock_text: str, params_text: str) -> None:
    """What every training run carries (issue 15), given the dvc.lock and params.yaml its repro left behind.

    The data as dataset inputs whose digest is dvc.lock's MD5 of data/mnist, system metrics, each stage's
    wall time, the evaluated model, the way back, and byte-equal copies of params.yaml and dvc.lock.
    """
    import tempfile

    client = mlflow_client(project)
    mlflow_run = client.get_run(run_id)
    lock = yaml.safe_load(lock_text)
    md5 = next(out["md5"] for out in lock["stages"]["download"]["outs"] if out["path"] == "data/mnist")
    params = yaml.safe_load(params_text)
    inputs = {
        next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
        for i in mlflow_run.inputs.dataset_inputs
    }
    assert set(inputs) == {"training", "test"}
    assert {context: dataset.digest for context, dataset in inputs.items()} == {"training": md5, "test": md5}
    assert inputs["training"].name == f"mnist-training[:{params['data']['max_train_images']}]"
    test_slice = params["data"]["max_test_images"]
    assert inputs["test"].name == ("mnist-test" if test_slice is None else f"mnist-test[:{test_slice}]")
    assert "data/mnist/train-images-idx3-ubyte.gz" in inputs["training"].source

    metrics = mlflow_run.data.metrics
    assert metrics["system/cpu_utilization_percentage"] >= 0 and metrics["system/system_memory_usage_megabytes"] > 0
    # A sample of the machine with each epoch's results: the test slice trains in a second or two, shorter than
    # the 5 s MLflow's sampling thread waited for its first sample (issue 33).
    epochs = list(range(1, params["epochs"] + 1))
    assert [m.step for m in client.get_metric_history(run_id, "system/cpu_utilization_percentage")] == epochs
    assert all(metrics[f"stage_seconds/{stage}"] > 0 for stage in ("train", "evaluate", "register"))
    tags = mlflow_run.data.tags
    (logged_model,) = [
        m for m in client.search_logged_models([mlflow_run.info.experiment_id]) if m.source_run_id == run_id
    ]
    assert tags["evaluate.model_id"] == logged_model.model_id
    assert tags["reproduce.command"] in tags["mlflow.note.content"]

    with tempfile.TemporaryDirectory() as folder:
        reproduce = Path(client.download_artifacts(run_id, "reproduce", folder))
        # Logged by the last stage before DVC wrote that stage's own entry: every other entry is the repro's.
        logged = yaml.safe_load((reproduce / "dvc.lock").read_text())
        assert {k: v for k, v in logged["stages"].items() if k != "register"} == {
            k: v for k, v in lock["stages"].items() if k != "register"
        }
        assert (reproduce / "params.yaml").read_text() == params_text


def shown_run_ids(project: Path) -> dict[str, str]:
    """`dvc exp show --json`'s run_id column: the MLflow run of the workspace and of each experiment, by name."""
    shown = json.loads(run(project, "dvc", "exp", "show", "--json").stdout)
    found = {}
    for revision in shown:
        revs = [revision] + [rev for experiment in (revision.get("experiments") or []) for rev in experiment["revs"]]
        for rev in revs:
            metrics = (rev.get("data") or {}).get("metrics") or {}
            run_id = (metrics.get("metrics/mlflow_run.json") or {}).get("data", {}).get("run_id")
            if run_id:
                found[rev.get("name") or rev["rev"]] = run_id
    return found


RESULT_METRICS = (
    "metrics/train.json",
    "metrics/history.csv",
    "metrics/eval.json",
    "metrics/confusion.csv",
    "metrics/mistakes.csv",
)
# What a run logs that is not a result: how long it took, what the machine was doing (thread counts are tags).
_NOT_RESULTS = ("train_seconds", "stage_seconds/", "system/")


def run_results(project: Path, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every result metric of an MLflow run with its history, (step, value) pairs: what must repeat bit for bit."""
    client = mlflow_client(project)
    names = [n for n in client.get_run(run_id).data.metrics if not n.startswith(_NOT_RESULTS)]
    return {name: sorted((m.step, m.value) for m in client.get_metric_history(run_id, name)) for name in names}


def results(project: Path) -> dict:
    """The workspace's results: the metrics files, the checkpoint's bytes, the output hashes dvc.lock records
    (when the pipeline ran through DVC) and the MLflow run's result metrics."""
    run_id = json.loads((project / "metrics" / "mlflow_run.json").read_text())["run_id"]
    lock = project / "dvc.lock"
    return {
        "files": {name: (project / name).read_text() for name in RESULT_METRICS},
        "checkpoint": (project / "models" / "model.pt").read_bytes(),
        "outs": lock_outs(lock.read_text()) if lock.exists() else None,
        "mlflow": run_results(project, run_id),
    }


def lock_outs(lock_text: str) -> dict[str, str]:
    """Every output hash in a dvc.lock, by path."""
    stages = yaml.safe_load(lock_text)["stages"]
    return {out["path"]: out["md5"] for stage in stages.values() for out in stage.get("outs", [])}
