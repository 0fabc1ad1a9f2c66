"""A search's MLflow side: one summary run per study, dead workers' runs marked KILLED, the summary's pictures."""

import mlflow
import optuna

from mnist_pipeline.search import summary
from mnist_pipeline.tracking import runs, store


def test_the_study_has_one_summary_run_whoever_asks(local_store):
    client, experiment_id = store.connect("exp-s")
    first = summary.summary_run(client, experiment_id, "st")
    assert summary.summary_run(client, experiment_id, "st") == first
    assert summary.summary_run(client, experiment_id, "other") != first
    assert client.get_run(first).data.tags[summary.SUMMARY_TAG] == "true"


def test_a_dead_worker_s_running_trial_run_is_marked_killed_and_no_other(local_store, monkeypatch):
    client, experiment_id = store.connect("exp-k")
    ids = {}
    for trial, status in (("0", "RUNNING"), ("1", "RUNNING"), ("0", "FINISHED")):
        monkeypatch.setenv(runs.STUDY_ENV, "st")
        monkeypatch.setenv(runs.TRIAL_ENV, trial)
        run = client.create_run(experiment_id, tags=runs.run_tags())
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status)
        ids[(trial, status)] = run.info.run_id
    assert summary.kill_trial_runs(client, experiment_id, "st", 0) == [ids[("0", "RUNNING")]]
    assert client.get_run(ids[("0", "RUNNING")]).info.status == "KILLED"
    assert client.get_run(ids[("1", "RUNNING")]).info.status == "RUNNING"
    assert client.get_run(ids[("0", "FINISHED")]).info.status == "FINISHED"


def test_a_trial_run_is_tagged_with_its_study_and_is_a_child_of_the_summary(local_store, monkeypatch):
    monkeypatch.setenv(runs.STUDY_ENV, "st")
    monkeypatch.setenv(runs.TRIAL_ENV, "3")
    monkeypatch.setenv(runs.PARENT_ENV, "abc")
    tags = runs.run_tags()
    assert (tags[runs.STUDY_TAG], tags[runs.TRIAL_TAG], tags["mlflow.parentRunId"]) == ("st", "3", "abc")
    for name in (runs.STUDY_ENV, runs.TRIAL_ENV, runs.PARENT_ENV):
        monkeypatch.delenv(name)
    assert runs.STUDY_TAG not in runs.run_tags() and "mlflow.parentRunId" not in runs.run_tags()


def test_the_summary_holds_the_best_trial_and_two_pictures(local_store):
    client, experiment_id = store.connect("exp-p")
    run_id = summary.summary_run(client, experiment_id, "st")
    study = optuna.create_study(direction="maximize")
    for value in (0.5, 0.9, 0.7):
        trial = study.ask()
        trial.suggest_float("lr", 0.001, 0.1, log=True)
        trial.suggest_float("momentum", 0.0, 0.9)
        trial.set_user_attr("test_accuracy", value - 0.01)
        study.tell(trial, value)
    summary.log_summary(client, run_id, study, "st-1")
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED" and logged.data.tags["search.best_trial"] == "st-1"
    assert logged.data.metrics["best_val_accuracy"] == 0.9 and logged.data.metrics["best_test_accuracy"] == 0.89
    assert logged.data.metrics["trials_finished"] == 3 and "best.lr" in logged.data.params
    assert {a.path for a in client.list_artifacts(run_id, "search")} == {
        "search/optimization_history.png",
        "search/param_importances.png",
    }
    mlflow.end_run()
