"""A search's MLflow side: the study's summary run (the trials' parent), and the runs of dead workers' trials."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mnist_pipeline.tracking.store import (
    STORE_ERRORS,
    MlflowClient,
    mlflow,
)  # first: it sets MLflow's environment before MLflow loads

# isort: split
from mnist_pipeline.tracking.runs import STUDY_TAG, TRIAL_TAG

SUMMARY_TAG = "search.summary"  # the study's summary run, the trials' parent


def summary_run(client: MlflowClient, experiment_id: str, study: str) -> str:
    """The id of the study's summary run: found by its tags, or started now (several workers share one)."""
    query = f"tags.`{STUDY_TAG}` = '{study}' and tags.`{SUMMARY_TAG}` = 'true'"
    found = client.search_runs([experiment_id], filter_string=query, order_by=["attributes.start_time ASC"])
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=f"{study} (search)",
        tags={
            STUDY_TAG: study,
            SUMMARY_TAG: "true",
            "mlflow.note.content": f"Study {study}: every trial is a child run of this one.",
        },
    )
    # Two workers starting at once may both create one: the oldest is the study's, the other ends at once.
    found = client.search_runs([experiment_id], filter_string=query, order_by=["attributes.start_time ASC"])
    if found and found[0].info.run_id != run.info.run_id:
        client.delete_run(run.info.run_id)
        return found[0].info.run_id
    return run.info.run_id


def kill_trial_runs(client: MlflowClient, experiment_id: str, study: str, trial: int) -> list[str]:
    """Mark KILLED the runs of trial `trial` still RUNNING (their worker died); return their ids."""
    query = f"tags.`{STUDY_TAG}` = '{study}' and tags.`{TRIAL_TAG}` = '{trial}' and attributes.status = 'RUNNING'"
    runs = client.search_runs([experiment_id], filter_string=query)
    for run in runs:
        client.set_terminated(run.info.run_id, "KILLED")
    return [run.info.run_id for run in runs]


def end_summary(client: MlflowClient, run_id: str, status: str) -> bool:
    """Mark the summary run `status` (FAILED, KILLED) as a worker stops early; False when the store cannot be told."""
    try:
        client.set_terminated(run_id, status)
        mlflow.flush_async_logging()
    except STORE_ERRORS:  # the worker's own error, which says why it stopped, matters more
        return False
    return True


def log_summary(client: MlflowClient, run_id: str, study, best_experiment: str | None) -> None:
    """The study as it stands on the summary run: the best trial's params and scores, and two pictures."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from matplotlib import pyplot as plt
    from mlflow.entities import Metric, Param, RunTag

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return
    best = study.best_trial
    metrics = [Metric("best_val_accuracy", best.value, 0, 0), Metric("trials_finished", len(complete), 0, 0)]
    if "test_accuracy" in best.user_attrs:
        metrics.append(Metric("best_test_accuracy", best.user_attrs["test_accuracy"], 0, 0))
    client.log_batch(run_id, metrics=metrics, tags=[RunTag("search.best_trial", best_experiment or str(best.number))])
    existing = client.get_run(run_id).data.params
    params = [Param(f"best.{k}", str(v)) for k, v in best.params.items() if f"best.{k}" not in existing]
    if params:  # params are write-once in MLflow: the best so far is in the tags and metrics
        client.log_batch(run_id, params=params)
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as folder:
        warnings.simplefilter("ignore")  # optuna's matplotlib plots are marked experimental
        pictures: list[tuple[str, Callable[[optuna.Study], Any]]] = [
            ("optimization_history.png", optuna.visualization.matplotlib.plot_optimization_history)
        ]
        if len(complete) >= 2 and best.params:
            pictures.append(("param_importances.png", optuna.visualization.matplotlib.plot_param_importances))
        for name, draw in pictures:
            try:
                axes = draw(study)
            except (ValueError, RuntimeError):  # e.g. importances of params that never varied
                continue
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.savefig(Path(folder) / name, dpi=100, bbox_inches="tight")
            plt.close(figure)
            client.log_artifact(run_id, str(Path(folder) / name), "search")
    client.set_terminated(run_id, "FINISHED")
    mlflow.flush_async_logging()
