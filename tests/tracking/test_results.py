"""What the register stage adds to a finished training run, and how it reads the store's answers."""

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
from mlflow.tracking import MlflowClient

from mnist_pipeline.reports import EvaluationReport, EvaluationRun
from mnist_pipeline.tracking import results, runs, store


def test_log_results_adds_to_a_finished_run_and_skips_a_missing_one(local_store, tmp_path):
    client, experiment_id = store.connect("exp-d")
    with runs.training_run(experiment_id, {}) as run_id:
        pass
    plot = tmp_path / "accuracy.png"
    plot.write_bytes(b"png")
    evaluation = tmp_path / "eval.json"
    evaluation.write_text("{}")
    assert results.log_results(
        "exp-d", run_id, metrics={"eval_accuracy": 0.9}, files={"plots": (plot,), "metrics": (evaluation,)}
    )
    assert client.get_run(run_id).data.metrics["eval_accuracy"] == 0.9
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/accuracy.png"]
    assert [a.path for a in client.list_artifacts(run_id, "metrics")] == ["metrics/eval.json"]
    assert not results.log_results("exp-d", "0" * 32, metrics={"eval_accuracy": 0.9})


def test_the_evaluation_metrics_come_from_evaluates_two_files():
    evaluation = EvaluationReport(0.98, 0.06, 10000, {str(d): 0.9 + d / 100 for d in range(10)})
    metrics = results.evaluation_metrics(evaluation, EvaluationRun(threads=2, seconds=1.25))
    assert metrics == {
        "eval_accuracy": 0.98,
        "eval_loss": 0.06,
        "stage_seconds/evaluate": 1.25,
        **{f"eval_accuracy_digit_{d}": 0.9 + d / 100 for d in range(10)},
    }


def test_the_evaluations_settings_are_tags_not_metrics():
    """A thread count as a metric is what MLflow's compare view plotted (issue 33): a setting is a tag."""
    eval_run = EvaluationRun(threads=2, seconds=1.25)
    assert results.evaluation_tags("models:/m-123", eval_run) == {"evaluate.model_id": "m-123", "evaluate.threads": "2"}
    assert results.evaluation_tags(None, eval_run) == {"evaluate.threads": "2"}
    assert results.evaluation_tags("models:/m-123", None) == {"evaluate.model_id": "m-123"}  # evaluate did not run


def test_log_results_logs_metrics_and_tags_in_one_batch_and_texts_as_artifacts(local_store):
    client, experiment_id = store.connect("exp-l")
    with runs.training_run(experiment_id, {}) as run_id:
        pass
    assert results.log_results(
        "exp-l",
        run_id,
        metrics={"stage_seconds/plot": 1.5},
        tags=results.evaluation_tags("models:/m-123", EvaluationRun(threads=2, seconds=1.0)),
        texts={results.LOCK_ARTIFACT: "schema: '2.0'\n"},
    )
    run = client.get_run(run_id)
    assert run.data.metrics["stage_seconds/plot"] == 1.5 and run.data.tags["evaluate.model_id"] == "m-123"
    assert mlflow.artifacts.load_text(f"runs:/{run_id}/reproduce/dvc.lock") == "schema: '2.0'\n"


def test_a_transient_store_error_is_not_taken_for_a_missing_run(local_store, monkeypatch):
    """A locked SQLite file or a 503 is one line and a failure; only "does not exist" means the run is gone."""
    _, experiment_id = store.connect("exp-w")
    with runs.training_run(experiment_id, {}) as run_id:
        pass

    def unavailable(self, run_id):
        raise MlflowException("database is locked", TEMPORARILY_UNAVAILABLE)

    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "get_run", unavailable)
        with pytest.raises(
            store.TrackingError,
            match=rf"^MLflow store sqlite:///\S+: cannot read run {run_id} "
            r"\(database is locked\); nothing logged; run `dvc repro` again$",
        ):
            results.log_results("exp-w", run_id, metrics={"eval_accuracy": 0.9})
        with (
            pytest.raises(store.TrackingError, match=rf"cannot read run {run_id} "),
            runs.training_run(experiment_id, {}, resume_run_id=run_id),
        ):
            pass  # a resume must not quietly become a new run
    assert not results.log_results("exp-w", "0" * 32, metrics={"eval_accuracy": 0.9})  # really missing: False
