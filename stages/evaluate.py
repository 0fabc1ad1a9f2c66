"""Stage evaluate: rebuild the model from its checkpoint and measure it on the test set.

It does not import MLflow, which would double its time: the register stage logs
these results to the run and registers the model.
"""

from mnist_pipeline.cli import run_stage  # first: its quick exit must be the first exit handler

# isort: split
from mnist_pipeline.checkpoint import load_checkpoint, model_from_checkpoint, require_complete
from mnist_pipeline.compute import kernels, threads
from mnist_pipeline.compute.device import place_model, resolve_device, use_threads
from mnist_pipeline.compute.shards import Workers
from mnist_pipeline.config import load_config, parse_config
from mnist_pipeline.data import load_split, load_training
from mnist_pipeline.evaluation import metrics, mistakes, score
from mnist_pipeline.reports import EvaluationReport, EvaluationRun, write_confusion, write_mistakes
from mnist_pipeline.timing import StageClock


def main() -> None:
    clock = StageClock("evaluate")
    config = load_config()
    device = resolve_device(config.train.device)
    thread_choice = threads.choose(config.train.threads, threads.available_cores())
    # On a CPU torch runs on one thread and the workers predict fixed chunks side by side: the same bits on any count.
    workers = Workers(thread_choice.threads) if device.type == "cpu" else None
    use_threads(1 if workers is not None else thread_choice.threads)
    print(thread_choice.describe("evaluate") + ("; the results do not depend on them" if workers else ""))
    clock.mark("start-up and imports")
    checkpoint = load_checkpoint(config.paths.checkpoint)
    require_complete(checkpoint, config.paths.checkpoint)
    # Normalisation and the test slice come from the run that made the
    # checkpoint, not from today's params.yaml.
    trained_config = parse_config(checkpoint["config"])
    trained = trained_config.data
    model = place_model(model_from_checkpoint(checkpoint), device)
    # Scored in the kernels it was tested in after each epoch, where they apply here.
    kernel_plan = kernels.plan(trained_config.train.kernels, model, device, trained_config.train.precision)
    print(f"evaluate: {kernel_plan.line}")
    own_kernels = kernels.ReferenceKernels(model) if kernel_plan.used else None
    test_split = load_split(config.data.dir, False, trained.mean, trained.std, trained.max_test_images).to(device)
    # The held-out training images the run was trained without, if any: what searches score on.
    validation_split = None
    if trained.validation_images:
        _, validation_split = load_training(
            config.data.dir, trained.mean, trained.std, trained.max_train_images, trained.validation_images
        )

    clock.mark("data and model")
    # One pass over the test set serves both the metrics and the list of mistakes.
    scores = score(model, test_split, workers=workers, kernels=own_kernels)
    result = metrics(scores, test_split.labels)
    per_class = {str(digit): round(acc, 6) for digit, acc in enumerate(result.per_class_accuracy)}
    validation = None
    if validation_split is not None:
        validation_split = validation_split.to(device)
        validation = metrics(
            score(model, validation_split, workers=workers, kernels=own_kernels), validation_split.labels
        )
        print(
            f"evaluate: validation accuracy {validation.accuracy:.2%}, validation loss {validation.loss:.4f} "
            f"on {len(validation_split)} held-out training images"
        )
    EvaluationReport(
        result.accuracy,
        result.loss,
        len(test_split),
        per_class,
        val_accuracy=validation.accuracy if validation else None,
        val_loss=validation.loss if validation else None,
        val_images=len(validation_split) if validation_split is not None else 0,
    ).write(config.paths.eval_metrics)
    write_confusion(config.paths.confusion, result.confusion_matrix)
    write_mistakes(config.paths.mistakes, mistakes(scores, test_split.labels))
    print(f"evaluate: test accuracy {result.accuracy:.2%}, test loss {result.loss:.4f} on {len(test_split)} images")
    print("evaluate: per digit " + "  ".join(f"{d}:{acc:.1%}" for d, acc in enumerate(result.per_class_accuracy)))

    clock.mark("evaluation")
    # Not a result (it differs run to run), so not in eval.json: what the register stage adds to the MLflow run.
    EvaluationRun(thread_choice.threads, round(clock.total(), 3)).write(config.paths.eval_run)
    clock.report()


if __name__ == "__main__":
    run_stage(main)
