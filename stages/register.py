"""Stage register: add the evaluation, the plots and dvc.lock to the training's MLflow run, then make its
model the registry's champion when it is the best so far.

The last stage. The evaluate and plot stages import no MLflow; this one reports for them.
"""

from __future__ import annotations

from pathlib import Path

from mnist_pipeline.cli import run_stage  # first: its quick exit must be the first exit handler

# isort: split
from mnist_pipeline.config import load_config
from mnist_pipeline.errors import PipelineError
from mnist_pipeline.reports import EvaluationReport, EvaluationRun, read_json, write_json
from mnist_pipeline.timing import StageClock
from mnist_pipeline.tracking import registry, results, store

PLOTS = ("accuracy.png", "loss.png", "confusion.png", "mistakes.png")  # the plot stage's PNGs


def main() -> None:
    clock = StageClock("register")
    config = load_config()
    store.connect(config.tracking.experiment)  # an unusable store fails here, before anything is logged
    clock.mark("MLflow import and store")
    run = read_json(config.paths.mlflow_run)
    run_id = run["run_id"]
    # Absent where evaluate did not run: a fresh clone trains the committed model again, byte for byte, and
    # DVC keeps the committed evaluation of it.
    eval_run = EvaluationRun.read(config.paths.eval_run) if Path(config.paths.eval_run).exists() else None
    evaluation = EvaluationReport.read(config.paths.eval_metrics)
    metrics = results.evaluation_metrics(evaluation, eval_run)
    metrics["stage_seconds/register"] = clock.total()
    lock_text = results.current_lock()
    plots = tuple(Path(config.paths.plots_dir) / name for name in PLOTS)
    logged = results.log_results(
        config.tracking.experiment,
        run_id,
        metrics=metrics,
        tags=results.evaluation_tags(run.get("model_uri"), eval_run),
        files={"metrics": (config.paths.eval_metrics,), "plots": plots},
        texts={results.LOCK_ARTIFACT: lock_text} if lock_text else None,
    )
    if not logged:
        raise PipelineError(
            f"MLflow run {run_id} (paths.mlflow_run) is not in the store {store.shown(store.tracking_uri())}; "
            "nothing logged; dvc repro -f trains a new run"
        )
    if run.get("model_uri"):
        promotion = registry.promote_if_best(
            config.tracking.experiment, run_id, run["model_uri"], config.tracking.registered_model
        )
        print(f"register: {promotion.message}")
    # Only what is the same for the same results: no run id or version here (dvc.lock hashes this file).
    write_json(
        config.paths.registered,
        {
            "evaluation": config.paths.eval_metrics,
            "test_accuracy": evaluation.test_accuracy,
            "test_images": evaluation.test_images,
            "model_logged": bool(run.get("model_uri")),
            "registered_model": config.tracking.registered_model,
        },
    )
    clock.mark("logging and registry")
    clock.report()


if __name__ == "__main__":
    run_stage(main)
