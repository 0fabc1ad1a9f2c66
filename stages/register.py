"""Stage register: add the evaluation, the plots and dvc.lock to the training's MLflow run, then make its
model the registry's champion when it is the best so far.

The last stage. The evaluate and plot stages import no MLflow; this one reports for them.
"""

from __future__ import annotations

from pathlib import Path

from mnist_pipeline import registry, reporting, store
from mnist_pipeline.cli import run_stage
from mnist_pipeline.config import load_config
from mnist_pipeline.reports import EvaluationReport, EvaluationRun, read_json
from mnist_pipeline.timing import StageClock

PLOTS = ("accuracy.png", "loss.png", "confusion.png", "mistakes.png")  # the plot stage's PNGs


def main() -> None:
    clock = StageClock("register")
    config = load_config()
    store.connect(config.tracking.experiment)  # an unusable store fails here, before anything is logged
    clock.mark("MLflow import and store")
    run = read_json(config.paths.mlflow_run)
    run_id = run["run_id"]
    metrics = reporting.evaluation_metrics(EvaluationReport.read(config.paths.eval_metrics),
                                           EvaluationRun.read(config.paths.eval_run))
    metrics["stage_seconds/register"] = clock.total()
    lock_text = reporting.current_lock()
    plots = tuple(Path(config.paths.plots_dir) / name for name in PLOTS)
    logged = reporting.log_results(config.tracking.experiment, run_id, metrics=metrics,
                                   tags=reporting.evaluated_model_tags(run.get("model_uri")),
                                   files={"metrics": (config.paths.eval_metrics,), "plots": plots},
                                   texts={reporting.LOCK_ARTIFACT: lock_text} if lock_text else None)
    if not logged:
        print(f"register: warning: MLflow run {run_id} is not in the store; nothing logged "
              "(dvc repro -f train makes a new run)")
    elif run.get("model_uri"):
        promotion = registry.promote_if_best(config.tracking.experiment, run_id, run["model_uri"],
                                             config.tracking.registered_model)
        print(f"register: {promotion.message}")
    clock.mark("logging and registry")
    clock.report()


if __name__ == "__main__":
    run_stage(main)
