"""A training's one MLflow run: named and tagged after the DVC experiment, ended with the right status."""

import os
import socket
import subprocess
import sys

import pytest

from mnist_pipeline.tracking import runs, store


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
    with pytest.raises(RuntimeError), runs.training_run(experiment_id, {}) as run_id:
        raise RuntimeError("boom")
    assert client.get_run(run_id).info.status == "FAILED"


def test_a_run_opens_in_mlflows_compare_view_on_test_accuracy(local_store):
    """MLflow 3.17's compare view plots the first metric a run was given, as a SQLite store returns them in the
    order they were first logged: the epoch's batch puts test_accuracy first, before its loss and the machine."""
    client, experiment_id = store.connect("exp-h")
    with runs.training_run(experiment_id, {"lr": 0.05}) as run_id:
        epoch = {"train_loss": 0.5, "test_loss": 0.4, "test_accuracy": 0.9}
        runs.log_epoch({**epoch, "system/cpu_utilization_percentage": 50.0}, 1)
        runs.log_epoch({"train_seconds": 1.5}, 1)
    assert list(client.get_run(run_id).data.metrics) == [
        "test_accuracy",
        "train_loss",
        "test_loss",
        "system/cpu_utilization_percentage",
        "train_seconds",
    ]


def test_each_start_of_a_training_tags_its_thread_count_and_logs_no_setting_as_a_metric(local_store):
    """A thread count is a setting (a tag); a resumed training may run on another, so each start adds its own."""
    client, experiment_id = store.connect("exp-t")
    training = {"lr": 0.05, "epochs": 4}
    with pytest.raises(KeyboardInterrupt), runs.training_run(experiment_id, training) as killed:
        runs.record_threads(2, 1)
        runs.log_epoch({"test_accuracy": 0.5}, 1)
        runs.log_epoch({"test_accuracy": 0.6}, 2)
        raise KeyboardInterrupt
    assert client.get_run(killed).data.tags[runs.THREADS_TAG] == "2 from epoch 1"
    with runs.training_run(experiment_id, training, killed, resume_params=training) as resumed:
        runs.record_threads(1, 3)
        runs.log_epoch({"test_accuracy": 0.7}, 3)
    run = client.get_run(resumed)
    assert resumed == killed and run.data.tags[runs.THREADS_TAG] == "2 from epoch 1, 1 from epoch 3"
    assert list(run.data.metrics) == ["test_accuracy"]


def test_ctrl_c_marks_the_run_killed(local_store):
    client, experiment_id = store.connect("exp-f")
    with pytest.raises(KeyboardInterrupt), runs.training_run(experiment_id, {}) as run_id:
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


def test_a_resume_continues_only_an_unfinished_run_of_the_same_training(local_store):
    """The run id beside the checkpoint may be a later training's, killed before its first checkpoint."""
    client, experiment_id = store.connect("exp-r")
    params = {"lr": 0.05, "epochs": 3, "threads": "auto"}
    with pytest.raises(KeyboardInterrupt), runs.training_run(experiment_id, params) as killed:
        raise KeyboardInterrupt
    with runs.training_run(experiment_id, params) as finished:
        pass
    training = {"lr": 0.05, "epochs": 3}  # the params that decide the numbers; threads may differ
    assert runs.resumable(client, killed, training)
    assert not runs.resumable(client, killed, {"lr": 0.01, "epochs": 3})  # another training's run
    assert not runs.resumable(client, finished, training)  # a finished run is a result, not continued
    assert not runs.resumable(client, "0" * 32, training)  # the store was reset since
    with runs.training_run(experiment_id, {**params, "threads": 1}, killed, resume_params=training) as resumed:
        pass
    assert resumed == killed and client.get_run(killed).info.status == "FINISHED"
    with runs.training_run(
        experiment_id, {"lr": 0.01, "epochs": 3}, finished, resume_params={"lr": 0.01, "epochs": 3}
    ) as fresh:
        pass
    assert fresh not in (killed, finished)


def test_the_logged_model_loads_and_predicts_where_torch_sees_a_gpu(local_store, monkeypatch):
    """MLflow's pt2 loader puts a model on "cuda" whenever torch sees a GPU, and refuses weights exported on the
    CPU there: the model is logged to load on the CPU, on any machine. Here MLflow is made to believe in a GPU,
    from the logging (which loads the model to check its serving example) to the predictions."""
    import logging

    import mlflow.pyfunc
    import numpy as np
    import torch

    from mnist_pipeline.model import DigitClassifier, ReferenceCNN

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = warnings.append
    logging.getLogger("mlflow").addHandler(handler)
    try:
        _, experiment_id = store.connect("exp-gpu")
        with runs.training_run(experiment_id, {}):
            uri = runs.log_model(
                DigitClassifier(ReferenceCNN(), 0.1307, 0.3081).eval(), np.zeros((2, 1, 28, 28), np.float32)
            )
    finally:
        logging.getLogger("mlflow").removeHandler(handler)
    assert [record.getMessage()[:80] for record in warnings] == []  # no "Failed to validate serving input"
    model = mlflow.pyfunc.load_model(uri)  # as the README loads it
    probabilities = model.predict(np.full((3, 1, 28, 28), 255, np.float32))
    assert probabilities.shape == (3, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert model.metadata.flavors.keys() >= {"pytorch", "python_function"}  # still torch's flavor, pt2
