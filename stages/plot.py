"""Stage plot: PNGs of accuracy and loss against epoch, the confusion matrix and the misclassified digits.

The last stage, and the one that reports to the MLflow run after training: the evaluation's metrics
(evaluate does not import MLflow), the plots and the dvc.lock; then the registry's champion.
"""

from pathlib import Path

from mnist_pipeline import tracking
from mnist_pipeline.cli import run_stage
from mnist_pipeline.config import load_config
from mnist_pipeline.data import raw_images
from mnist_pipeline.lineage import lock_for_run
from mnist_pipeline.plots import (accuracy_figure, check_colormap, confusion_figure, loss_figure, mistakes_figure,
                                  save_figure)
from mnist_pipeline.reports import read_confusion, read_history, read_json, read_mistakes
from mnist_pipeline.timing import StageClock


def main() -> None:
    clock = StageClock("plot")
    config = load_config()
    clock.mark("start-up and imports")
    check_colormap(config.plots.cmap)
    history = read_history(config.paths.history)
    confusion = read_confusion(config.paths.confusion)
    mistakes = read_mistakes(config.paths.mistakes)

    out = Path(config.paths.plots_dir)
    written = [
        save_figure(accuracy_figure(history, config.plots), out / "accuracy.png"),
        save_figure(loss_figure(history, config.plots), out / "loss.png"),
        save_figure(confusion_figure(confusion, config.plots), out / "confusion.png"),
        save_figure(mistakes_figure(raw_images(config.data.dir, train=False), mistakes, config.plots),
                    out / "mistakes.png"),
    ]
    for path in written:
        print(f"plot: {path}")

    clock.mark("plotting")
    # The last stage: dvc.lock as this repro leaves it, so that the run carries what `dvc repro` needs.
    lock_text, lock_note = lock_for_run("plot")
    if lock_note:
        print(f"plot: {lock_note}")
    clock.mark("dvc.lock")
    run = read_json(config.paths.mlflow_run)
    run_id = run["run_id"]
    metrics = tracking.evaluation_metrics(read_json(config.paths.eval_metrics), read_json(config.paths.eval_run))
    metrics["stage_seconds/plot"] = clock.total()
    if not tracking.log_results(config.tracking.experiment, run_id, metrics=metrics,
                                tags=tracking.evaluated_model_tags(run.get("model_uri")),
                                files={"metrics": (config.paths.eval_metrics,), "plots": tuple(written)},
                                texts={tracking.LOCK_ARTIFACT: lock_text} if lock_text else None):
        print(f"plot: warning: MLflow run {run_id} is not in the store; nothing logged (dvc repro -f train makes a new run)")
    elif run.get("model_uri"):
        promoted = tracking.promote_if_best(config.tracking.experiment, run_id, run["model_uri"],
                                            config.tracking.registered_model)
        if promoted:
            print(f"plot: best so far: registered as {promoted}")
    clock.mark("logging and registry")
    clock.report()


if __name__ == "__main__":
    run_stage(main)
