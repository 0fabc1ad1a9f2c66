"""Stage plot: PNGs of accuracy and loss against epoch, the confusion matrix and the misclassified digits.

The last stage, and the one that reports to the MLflow run after training: the evaluation's metrics
(evaluate does not import MLflow), the plots and dvc.lock; then the registry's champion.
"""

from __future__ import annotations

from pathlib import Path

from mnist_pipeline.cli import run_stage
from mnist_pipeline.config import Config, load_config
from mnist_pipeline.reports import read_json
from mnist_pipeline.timing import StageClock


def draw(config: Config) -> list[Path]:
    """Write the four PNGs; return their paths."""
    from mnist_pipeline.data import raw_images
    from mnist_pipeline.plots import (accuracy_figure, check_colormap, confusion_figure, loss_figure,
                                      mistakes_figure, save_figure)
    from mnist_pipeline.reports import read_confusion, read_history, read_mistakes

    check_colormap(config.plots.cmap)
    history = read_history(config.paths.history)
    out = Path(config.paths.plots_dir)
    return [
        save_figure(accuracy_figure(history, config.plots), out / "accuracy.png"),
        save_figure(loss_figure(history, config.plots), out / "loss.png"),
        save_figure(confusion_figure(read_confusion(config.paths.confusion), config.plots), out / "confusion.png"),
        save_figure(mistakes_figure(raw_images(config.data.dir, train=False), read_mistakes(config.paths.mistakes),
                                    config.plots), out / "mistakes.png"),
    ]


def main() -> None:
    clock = StageClock("plot")
    config = load_config()
    clock.mark("start-up")
    from mnist_pipeline import lineage, tracking

    tracking.connect(config.tracking.experiment)  # an unusable store fails here, before anything is drawn or logged
    clock.mark("MLflow import and store")
    written = draw(config)
    for path in written:
        print(f"plot: {path}")
    clock.mark("plots")

    run = read_json(config.paths.mlflow_run)
    run_id = run["run_id"]
    metrics = tracking.evaluation_metrics(read_json(config.paths.eval_metrics), read_json(config.paths.eval_run))
    metrics["stage_seconds/plot"] = clock.total()
    # DVC writes each stage's entry into dvc.lock when the stage ends: every entry but this stage's is this repro's.
    lock_text = lineage.current_lock()
    if not tracking.log_results(config.tracking.experiment, run_id, metrics=metrics,
                                tags=tracking.evaluated_model_tags(run.get("model_uri")),
                                files={"metrics": (config.paths.eval_metrics,), "plots": tuple(written)},
                                texts={tracking.LOCK_ARTIFACT: lock_text} if lock_text else None):
        print(f"plot: warning: MLflow run {run_id} is not in the store; nothing logged (dvc repro -f train makes a new run)")
    elif run.get("model_uri"):
        promotion = tracking.promote_if_best(config.tracking.experiment, run_id, run["model_uri"],
                                             config.tracking.registered_model)
        print(f"plot: {promotion.message}")
    clock.mark("logging and registry")
    clock.report()


if __name__ == "__main__":
    run_stage(main)
