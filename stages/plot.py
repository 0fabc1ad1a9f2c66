"""Stage plot: PNGs of accuracy and loss against epoch, the confusion matrix and the misclassified digits.

The last stage, and the one that reports to the MLflow run after training: the evaluation's metrics
(evaluate does not import MLflow), the plots and the dvc.lock; then the registry's champion.
Its two halves share the cores: a forked process draws the PNGs and computes dvc.lock while this
one imports MLflow and opens the store, which one process would do one after the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from mnist_pipeline.cli import in_forked_process, run_stage
from mnist_pipeline.config import Config, load_config
from mnist_pipeline.reports import read_json
from mnist_pipeline.timing import StageClock


def draw(config: Config) -> tuple[list[Path], Optional[str], Optional[str]]:
    """Write the four PNGs, then compute the dvc.lock this repro leaves (it hashes them); no MLflow here."""
    from mnist_pipeline.data import raw_images
    from mnist_pipeline.lineage import lock_for_run
    from mnist_pipeline.plots import (accuracy_figure, check_colormap, confusion_figure, loss_figure,
                                      mistakes_figure, save_figure)
    from mnist_pipeline.reports import read_confusion, read_history, read_mistakes

    check_colormap(config.plots.cmap)
    history = read_history(config.paths.history)
    out = Path(config.paths.plots_dir)
    written = [
        save_figure(accuracy_figure(history, config.plots), out / "accuracy.png"),
        save_figure(loss_figure(history, config.plots), out / "loss.png"),
        save_figure(confusion_figure(read_confusion(config.paths.confusion), config.plots), out / "confusion.png"),
        save_figure(mistakes_figure(raw_images(config.data.dir, train=False), read_mistakes(config.paths.mistakes),
                                    config.plots), out / "mistakes.png"),
    ]
    # The last stage: dvc.lock as this repro leaves it, so that the run carries what `dvc repro` needs.
    return (written, *lock_for_run("plot"))


def main() -> None:
    clock = StageClock("plot")
    config = load_config()
    clock.mark("start-up")
    with in_forked_process(draw, config) as drawing:
        from mnist_pipeline import tracking  # MLflow: imported after the fork, so that the drawing need not wait

        tracking.connect(config.tracking.experiment)  # an unusable store fails here, before anything is logged
        clock.mark("MLflow import and store")
        written, lock_text, lock_note = drawing.result()
    clock.mark("waiting for the plots and dvc.lock")
    for path in written:
        print(f"plot: {path}")
    if lock_note:
        print(f"plot: {lock_note}")

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
