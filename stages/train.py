"""Stage train: the reference CNN and loop; a resumable checkpoint after every epoch, one MLflow run."""

import time
from pathlib import Path

from mnist_pipeline import tracking
from mnist_pipeline.checkpoint import CheckpointError, load_checkpoint, restore_training, resume_decision, save_checkpoint
from mnist_pipeline.cli import run_stage
from mnist_pipeline.config import flatten, load_config
from mnist_pipeline.data import load_split
from mnist_pipeline.device import configure_determinism, resolve_device
from mnist_pipeline.model import DigitClassifier, ModelConfig, build_model
from mnist_pipeline.progress import epoch_bars
from mnist_pipeline.reports import write_history, write_json
from mnist_pipeline.seed import set_seed
from mnist_pipeline.training import make_optimizer, train


def main() -> None:
    config = load_config()
    device = resolve_device(config.train.device)
    configure_determinism(config.train.deterministic)
    # Connect before loading data or training: a dead tracking server fails now, not after the run.
    _, experiment_id = tracking.connect(config.tracking.experiment)
    paths, data, config_dict = config.paths, config.data, config.to_dict()

    # A checkpoint a killed run left behind (DVC keeps it: `persist` in dvc.yaml) resumes the same
    # params; anything else trains from scratch. Either way the user is told which, in one line.
    previous = None
    if Path(paths.checkpoint).exists():
        try:
            previous = load_checkpoint(paths.checkpoint)
        except CheckpointError as exc:
            print(f"train: ignoring {exc}")
    resume, reason = resume_decision(previous, config_dict)
    print(f"train: {reason}")

    train_split = load_split(data.dir, True, data.mean, data.std, data.max_train_images).to(device)
    test_split = load_split(data.dir, False, data.mean, data.std, data.max_test_images).to(device)
    generator = set_seed(config.train.seed)
    model_config = ModelConfig()
    model = build_model(model_config).to(device)
    optimizer = make_optimizer(model, config.train)
    history = restore_training(previous, model, optimizer, generator) if resume else []

    resume_run_id = previous.get("mlflow_run_id") if resume else None
    with tracking.training_run(experiment_id, flatten(config_dict), resume_run_id) as run_id:
        print(f"train: {len(train_split)} images, {config.train.epochs} epochs on {device}; MLflow run {run_id}")
        already_logged = tracking.logged_epochs(run_id)
        for result in history:  # epochs the killed run finished but did not get to log
            if result.epoch not in already_logged:
                tracking.log_epoch(result.as_metrics(), result.epoch)

        def end_of_epoch(history_so_far):
            # Checkpoint first: an epoch in MLflow is always an epoch a resume will not redo.
            save_checkpoint(paths.checkpoint, model=model, optimizer=optimizer, generator=generator,
                            model_config=model_config, config=config_dict, history=history_so_far,
                            mlflow_run_id=run_id)
            tracking.log_epoch(history_so_far[-1].as_metrics(), history_so_far[-1].epoch)

        started = time.perf_counter()
        history = train(model, optimizer, train_split, test_split, config.train, generator, history=history,
                        progress=epoch_bars(config.train.epochs), on_epoch_end=end_of_epoch)
        train_seconds = time.perf_counter() - started
        tracking.log_epoch({"train_seconds": train_seconds}, config.train.epochs)

        write_history(paths.history, history)
        last = history[-1]
        write_json(paths.train_metrics, {"epochs": last.epoch, **last.as_metrics()})
        write_json(paths.mlflow_run, {"run_id": run_id, "experiment": config.tracking.experiment})
        print(f"train: {train_seconds:.1f} s; test accuracy after epoch {last.epoch}: {last.test_accuracy:.2%}")
        print(f"train: checkpoint {paths.checkpoint}, history {paths.history}")

        if config.tracking.log_model:
            classifier = DigitClassifier(model.cpu(), data.mean, data.std)
            example = (test_split.images[:4].cpu() * data.std + data.mean) * 255  # raw pixels, as served
            print(f"train: logged model {tracking.log_model(classifier, example.round().numpy())}")


if __name__ == "__main__":
    run_stage(main)
