"""A training's one MLflow run: named and tagged after the DVC experiment, ended with the right status."""

import os
import socket
import subprocess
import sys

import pytest

from mnist_pipeline import runs, store


def test_training_run_is_named_and_tagged_after_the_dvc_experiment(local_store, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "lucky-lark")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    client, experiment_id = store.connect("exp-b")
    with runs.training_run(experiment_id, {"lr": 0.05, "data.max_train_images": None}) as run_id:
        runs.log_epoch({"test_accuracy": 0.5}, 1)
        runs.log_epoch({"test_accuracy": 0.75}, 2)
    run = client.get_run(run_id)
    assert run.info.run_name == "lucky-lark"
    assert run.info.status == "FINISHED"
    assert run.data.tags["dvc.exp_name"] == "lucky-lark"
    assert run.data.tags["mlflow.source.git.commit"] == "abc123"
    assert run.data.params == {"lr": "0.05", "data.max_train_images": "None"}
    assert run.data.tags["reproduce.command"] == "dvc exp apply lucky-lark"
    assert "`dvc exp apply lucky-lark`" in run.data.tags["mlflow.note.content"]  # the run's description
    history = client.get_metric_history(run_id, "test_accuracy")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.75)]


def test_a_crash_marks_the_run_failed(local_store):
    client, experiment_id = store.connect("exp-c")
    with pytest.raises(RuntimeError):
        with runs.training_run(experiment_id, {}) as run_id:
            raise RuntimeError("boom")
    assert client.get_run(run_id).info.status == "FAILED"


def test_missing_gpu_metrics_are_explained_in_one_line():
    note = runs.gpu_metrics_skipped()
    assert note is None or (note.startswith("GPU metrics skipped: ") and "\n" not in note)


def test_ctrl_c_marks_the_run_killed(local_store):
    client, experiment_id = store.connect("exp-f")
    with pytest.raises(KeyboardInterrupt):
        with runs.training_run(experiment_id, {}) as run_id:
            raise KeyboardInterrupt
    assert client.get_run(run_id).info.status == "KILLED"


def test_runs_of_dead_processes_are_marked_killed_and_live_ones_left(local_store):

    client, experiment_id = store.connect("exp-g")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    orphan = client.create_run(experiment_id, tags={runs.PID_TAG: dead.stdout.strip(), runs.HOST_TAG: host})
    alive = client.create_run(experiment_id, tags={runs.PID_TAG: str(os.getpid()), runs.HOST_TAG: host})
    elsewhere = client.create_run(experiment_id, tags={runs.PID_TAG: dead.stdout.strip(), runs.HOST_TAG: "other"})
    assert runs.close_orphaned_runs(client, experiment_id) == [orphan.info.run_id]
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"
    assert client.get_run(elsewhere.info.run_id).info.status == "RUNNING"
