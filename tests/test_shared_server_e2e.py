"""A team's MLflow server as the README sets it up: PostgreSQL behind `mlflow server`, artifacts served by it.

The pipeline is pointed at it by MLFLOW_TRACKING_URI alone, and everything is
read back through the server's API, as a teammate on another machine would.
Steps of one story on one project, in file order.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import require, requires_mnist_mirror
from dvc_project import environment, make_project, predicts_like_evaluate, run, stages_run
from servers import mlflow_server, postgres_bin, postgres_cluster

pytestmark = [pytest.mark.e2e, requires_mnist_mirror()]

REPRO: dict[Path, object] = {}


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster with an empty `mlflow` database; always stopped."""
    bin_dir = postgres_bin()
    require(
        bin_dir,
        "a PostgreSQL server (/usr/lib/postgresql/*/bin/initdb)",
        "apt-get install postgresql (as .ci/run does)",
    )
    with postgres_cluster(bin_dir) as databases:
        yield databases["mlflow"]


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory):
    """`mlflow server` as the README starts it, on that database, serving artifacts from a folder; always stopped."""
    folder = tmp_path_factory.mktemp("server")
    with mlflow_server(postgres, folder, environment()) as url:
        yield url, folder / "artifacts"


@pytest.fixture(scope="module")
def project(tmp_path_factory, tracking_server):
    """A copy after `dvc repro` with only MLFLOW_TRACKING_URI pointing at the server (REPRO keeps its output)."""
    url, _ = tracking_server
    project = make_project(tmp_path_factory.mktemp("project"))
    REPRO[project] = run(project, "dvc", "repro", env=environment(MLFLOW_TRACKING_URI=url))
    return project


@pytest.fixture
def client(tracking_server):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_server[0])


def test_repro_logs_one_finished_run_to_the_server_and_nothing_locally(project, tracking_server, client, postgres):
    assert stages_run(REPRO[project].stdout) == ["download", "train", "evaluate", "plot", "register"]
    # The project's own store is never touched when MLFLOW_TRACKING_URI is set.
    assert not (project / "mlflow.db").exists()
    assert not (project / "mlartifacts").exists()

    experiment = client.get_experiment_by_name("mnist-cnn")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server decides where artifacts go
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    mlflow_run = runs[0]
    run_id = mlflow_run.info.run_id
    assert json.loads((project / "metrics" / "mlflow_run.json").read_text())["run_id"] == run_id
    assert mlflow_run.info.status == "FINISHED"
    params = mlflow_run.data.params
    assert (params["lr"], params["epochs"], params["data.max_train_images"]) == ("0.01", "2", "2000")

    history = client.get_metric_history(run_id, "test_accuracy")
    assert [m.step for m in history] == [1, 2]
    evaluation = json.loads((project / "metrics" / "eval.json").read_text())
    assert mlflow_run.data.metrics["eval_accuracy"] == pytest.approx(evaluation["test_accuracy"])
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert plots == {"plots/accuracy.png", "plots/loss.png", "plots/confusion.png", "plots/mistakes.png"}
    print(f"\nserver run {run_id} status {mlflow_run.info.status}")
    print(
        f"params lr={params['lr']} epochs={params['epochs']} data.max_train_images={params['data.max_train_images']}"
        f" data.max_test_images={params['data.max_test_images']}"
    )
    print("test_accuracy history " + ", ".join(f"step {m.step}: {m.value:.4f}" for m in history))
    print(
        f"eval_accuracy {mlflow_run.data.metrics['eval_accuracy']:.4f} (metrics/eval.json {evaluation['test_accuracy']:.4f})"
    )

    # The run is in PostgreSQL, and the files in the server's artifact folder.
    import psycopg

    with psycopg.connect(postgres) as connection:
        rows = connection.execute("SELECT status FROM runs WHERE run_uuid = %s", (run_id,)).fetchall()
    assert rows == [("FINISHED",)]
    _, artifacts = tracking_server
    assert [p.name for p in artifacts.rglob("accuracy.png")] == ["accuracy.png"]
    assert len(list(artifacts.rglob("MLmodel"))) == 1


def test_champion_model_loads_through_the_server_and_predicts_like_the_evaluate_stage(project, tracking_server, client):
    import mlflow.pyfunc

    run_id = json.loads((project / "metrics" / "mlflow_run.json").read_text())["run_id"]
    champion = client.get_model_version_by_alias("mnist-cnn", "champion")
    assert champion.run_id == run_id  # the registry lives on the server too

    mlflow.set_tracking_uri(tracking_server[0])
    try:
        model = mlflow.pyfunc.load_model("models:/mnist-cnn@champion")
    finally:
        mlflow.set_tracking_uri(None)  # no server URI left behind for other tests (it also sets the env var)
    accuracy = predicts_like_evaluate(model, project)
    print(
        f"models:/mnist-cnn@champion is version {champion.version} of run {run_id}: "
        f"{accuracy:.4f} on the 10000 test images"
    )
