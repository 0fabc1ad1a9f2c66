"""What the register stage adds to a finished training's MLflow run: the evaluation, the plots, dvc.lock."""

from __future__ import annotations

import time
from pathlib import Path

from mnist_pipeline.tracking.store import (
    connect,
    mlflow,
    run_exists,
)  # first: it sets MLflow's environment before MLflow loads

# isort: split
from mnist_pipeline.reports import EvaluationReport, EvaluationRun
from mnist_pipeline.tracking.lineage import LOCK_FILE, REPRODUCE_DIR

LOCK_ARTIFACT = f"{REPRODUCE_DIR}/{LOCK_FILE}"
EVALUATED_MODEL_TAG = "evaluate.model_id"  # the logged model (m-...) the evaluate stage measured
EVAL_THREADS_TAG = "evaluate.threads"  # the evaluation's thread count: speed only, never the numbers


def evaluation_tags(model_uri: str | None, eval_run: EvaluationRun | None) -> dict[str, str]:
    """The evaluation's settings as tags: the logged model (models:/m-... -> m-...) it measured and its thread count
    (a setting, not a result: as a metric, MLflow's compare view would plot it), each where there is one."""
    tags = {EVALUATED_MODEL_TAG: model_uri.removeprefix("models:/")} if model_uri else {}
    return {**tags, EVAL_THREADS_TAG: str(eval_run.threads)} if eval_run is not None else tags


def evaluation_metrics(evaluation: EvaluationReport, eval_run: EvaluationRun | None) -> dict[str, float]:
    """The run's metrics from the evaluate stage's files: eval.json (the results) and eval_run.json (its seconds),
    which is absent where evaluate did not run (a fresh clone's committed eval.json)."""
    metrics = {"eval_accuracy": evaluation.test_accuracy, "eval_loss": evaluation.test_loss}
    if evaluation.val_accuracy is not None:  # what searches and model selection score on
        metrics["val_accuracy"] = evaluation.val_accuracy
    if evaluation.val_loss is not None:
        metrics["val_loss"] = evaluation.val_loss
    metrics.update(
        {f"eval_accuracy_digit_{digit}": accuracy for digit, accuracy in evaluation.per_class_accuracy.items()}
    )
    if eval_run is not None:
        metrics["stage_seconds/evaluate"] = eval_run.seconds
    return metrics


def log_results(
    experiment: str,
    run_id: str,
    *,
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
    files: dict[str, tuple[str | Path, ...]] | None = None,
    texts: dict[str, str] | None = None,
) -> bool:
    """Add metrics, tags and files to a finished training run (the register stage, after evaluate and plot).

    Metrics and tags go in one batch; `files` maps an artifact folder ("plots") to the files logged
    into it, and `texts` maps artifact paths (reproduce/dvc.lock) to their content.
    Returns False, logging nothing, when the store no longer holds the run
    (mlflow.db deleted since training): the stages' own outputs still count.
    """
    from mlflow.entities import Metric, RunTag

    client, _ = connect(experiment)
    if not run_exists(client, run_id):
        return False
    if metrics or tags:
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )
    for artifact_path, paths in (files or {}).items():
        for path in paths:
            client.log_artifact(run_id, str(path), artifact_path)
    for artifact_file, text in (texts or {}).items():
        client.log_text(run_id, text, artifact_file)
    # Under MLFLOW_ENABLE_ASYNC_LOGGING the batch is only queued: write it now, while the store can take it
    # (MLflow's own exit handler runs too late to, and drops what is left).
    mlflow.flush_async_logging()
    return True


def current_lock(lock_path: Path = Path(LOCK_FILE)) -> str | None:
    """dvc.lock as it is now, or None without one.

    DVC writes a stage's entry when the stage ends, so read from the last stage, every entry but
    that stage's own is this repro's: the data, the code, the params and the checkpoint that
    reproduce the run. (The last stage's own entry holds no outputs.)
    """
    try:
        return Path(lock_path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
