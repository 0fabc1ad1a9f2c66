"""Stage train: the network and recipe params.yaml names; a resumable checkpoint after every epoch, one MLflow run.

With `nproc` > 1 the stage relaunches itself under torchrun; rank 0 alone
writes files and talks to MLflow.
"""

import contextlib
import sys
import time
from pathlib import Path

from mnist_pipeline import datasets, distributed, kernels, runs, store, system_metrics, threads
from mnist_pipeline.checkpoint import (CheckpointError, load_checkpoint, restore_training, resume_decision, save_checkpoint,
                                       training_config)
from mnist_pipeline.cli import run_stage
from mnist_pipeline.config import PARAMS_FILE, flatten, load_config
from mnist_pipeline.data import blank_value, load_split, load_training
from mnist_pipeline.device import configure_determinism, place_model, resolve_device, use_threads
from mnist_pipeline.model import DigitClassifier, ModelConfig, build_model, parameter_count
from mnist_pipeline.progress import epoch_bars
from mnist_pipeline.reports import read_run_id, write_history, write_json
from mnist_pipeline.seed import set_seed
from mnist_pipeline.shards import Workers
from mnist_pipeline.timing import StageClock
from mnist_pipeline.training import make_optimizer, make_schedule, steps_per_epoch, train


def main() -> None:
    clock = StageClock("train")
    config = load_config()
    device = resolve_device(config.train.device)
    ranks = distributed.current()
    nproc = distributed.resolve_nproc(config.train.nproc, device)
    if nproc > 1 and not distributed.under_torchrun():
        distributed.check_nproc(nproc, config.train.batch_size, device)
        store.connect(config.tracking.experiment)  # a dead tracking server fails here, before the launch
        print(f"train: launching {nproc} processes with torchrun (nproc: {config.train.nproc})")
        sys.exit(distributed.launch(nproc, __file__))
    if ranks.distributed:
        device = distributed.init(ranks, device)
    # Before torch's first parallel work; the count goes on the MLflow run.
    compute = threads.for_training(config.train.threads, config.train.shards, threads.available_cores(),
                                   device=device.type, processes=ranks.world_size, compiled=config.train.compile)
    # Sharded, torch itself runs on one thread and the workers run the shards side by side.
    use_threads(1 if compute.sharded else compute.threads)
    workers = Workers(compute.threads) if compute.sharded else None
    if ranks.is_main:
        print(compute.line)
    determinism = configure_determinism(config.train.deterministic, device)
    if ranks.is_main and determinism:
        print(f"train: {determinism}")
    # Connect before loading data or training: a dead tracking server fails now, not after the run.
    clock.mark("start-up and imports")
    experiment_id = store.connect(config.tracking.experiment)[1] if ranks.is_main else None
    clock.mark("store")
    paths, data, config_dict = config.paths, config.data, config.to_dict()
    say = print if ranks.is_main else (lambda *args: None)

    # A checkpoint a killed run left behind (DVC keeps it: `persist` in dvc.yaml) resumes the same
    # params; anything else trains from scratch. Either way the user is told which, in one line.
    previous = None
    if Path(paths.checkpoint).exists():
        try:
            previous = load_checkpoint(paths.checkpoint)
        except CheckpointError as exc:
            say(f"train: ignoring {exc}")
    resume, reason = resume_decision(previous, config_dict)
    say(f"train: {reason}")

    train_split, _ = load_training(data.dir, data.mean, data.std, data.max_train_images, data.validation_images)
    train_split = train_split.to(device)
    test_split = load_split(data.dir, False, data.mean, data.std, data.max_test_images).to(device)
    clock.mark("data")
    generator = set_seed(config.train.seed)
    model_config = ModelConfig(architecture=config.train.model)
    model = place_model(build_model(model_config), device)
    kernel_plan = kernels.plan(config.train.kernels, model, device, config.train.precision, config.train.compile,
                               ranks.world_size)
    say(f"train: {kernel_plan.line}")
    optimizer = make_optimizer(model, config.train, kernel_plan.used)
    schedule = make_schedule(optimizer, config.train, steps_per_epoch(len(train_split), config.train.batch_size))
    history = restore_training(previous, model, optimizer, generator, schedule) if resume else []

    # The run the killed training logged to, kept beside the checkpoint (not in it: the checkpoint is a result).
    resume_run_id = read_run_id(paths.mlflow_run) if resume else None
    run = (runs.training_run(experiment_id, flatten(config_dict), resume_run_id,
                             resume_params=flatten(training_config(config_dict))) if ranks.is_main
           else contextlib.nullcontext(None))
    with run as run_id:
        if ranks.is_main:  # before the first checkpoint: a resume finds this run
            write_json(paths.mlflow_run, {"run_id": run_id, "experiment": config.tracking.experiment, "model_uri": None})
            # This run has yet to get its evaluation: the register stage must run after it (dvc.yaml says why).
            Path(paths.registered).unlink(missing_ok=True)
        processes = f" in {ranks.world_size} processes" if ranks.distributed else ""
        say(f"train: {config.train.model} network ({parameter_count(model):,} parameters), {len(train_split)} images, "
            f"{config.train.epochs} epochs on {device}{processes}; MLflow run {run_id}")
        if ranks.is_main:
            machine = system_metrics.Sampler()  # each epoch's sample covers the time since the one before
            runs.record_threads(compute.threads, len(history) + 1)  # a resume may run on another count
            already_logged = runs.logged_epochs(run_id)
            for result in history:  # epochs the killed run finished but did not get to log
                if result.epoch not in already_logged:
                    runs.log_epoch(result.as_metrics(), result.epoch)
            slices = {"training": data.training_images, "test": data.max_test_images}
            if data.validation_images:
                slices["validation"] = data.validation_images
            for note in datasets.log_lineage(data.dir, slices, PARAMS_FILE, on_gpu=device.type == "cuda"):
                say(f"train: {note}")

        def end_of_epoch(history_so_far):
            # Checkpoint first: an epoch in MLflow is always an epoch a resume will not redo.
            save_checkpoint(paths.checkpoint, model=model, optimizer=optimizer, generator=generator,
                            model_config=model_config, config=config_dict, history=history_so_far,
                            schedule=schedule)
            runs.log_epoch({**history_so_far[-1].as_metrics(), **machine.sample()}, history_so_far[-1].epoch)

        clock.mark("model, optimizer and run")
        started = time.perf_counter()
        history = train(model, optimizer, train_split, test_split, config.train, generator, history=history,
                        schedule=schedule, augment=config.augment, background=blank_value(data.mean, data.std),
                        progress=epoch_bars(config.train.epochs) if ranks.is_main else None, ranks=ranks,
                        on_epoch_end=end_of_epoch if ranks.is_main else None, workers=workers,
                        own_kernels=kernel_plan.used)
        train_seconds = time.perf_counter() - started
        clock.mark("training")
        distributed.shutdown()
        if not ranks.is_main:
            return
        runs.log_epoch({"train_seconds": train_seconds, "stage_seconds/train": clock.total()}, config.train.epochs)

        write_history(paths.history, history)
        last = history[-1]
        # No timing in here: the metrics files are results, bit-identical for the same params (MLflow has the time).
        write_json(paths.train_metrics, {"epochs": last.epoch, **last.as_metrics()})
        print(f"train: {train_seconds:.1f} s; test accuracy after epoch {last.epoch}: {last.test_accuracy:.2%}")
        print(f"train: checkpoint {paths.checkpoint}, history {paths.history}")

        model_uri = None
        if config.tracking.log_model:
            # A fresh network with the weights: the trained one may hold them as views of the kernels' block.
            network = build_model(model_config)
            network.load_state_dict(model.state_dict())
            classifier = DigitClassifier(network, data.mean, data.std).eval()  # dropout off, batch norm frozen
            example = (test_split.images[:4].cpu() * data.std + data.mean) * 255  # raw pixels, as served
            model_uri = runs.log_model(classifier, example.round().numpy())
            print(f"train: logged model {model_uri}")
        clock.mark("model logging")
        # The register stage registers this model (by its URI) when its evaluation beats the champion.
        write_json(paths.mlflow_run, {"run_id": run_id, "experiment": config.tracking.experiment,
                                      "model_uri": model_uri})
    clock.mark("closing the run")
    clock.report()


if __name__ == "__main__":
    run_stage(main)
