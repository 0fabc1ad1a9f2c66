"""Stage train: the network and recipe params.yaml names; a resumable checkpoint after every epoch, one MLflow run.

With `nproc` > 1 the stage relaunches itself under torchrun; rank 0 alone writes files and talks to MLflow.
"""

import contextlib
import time

from mnist_pipeline.cli import run_stage  # first: its quick exit must be the first exit handler

# isort: split
from mnist_pipeline.checkpoint import resume_point, save_checkpoint
from mnist_pipeline.compute import distributed
from mnist_pipeline.compute.device import configure_determinism, resolve_device
from mnist_pipeline.config import load_config
from mnist_pipeline.data import blank_value, raw_pixels, training_splits
from mnist_pipeline.model import parameter_count, served_copy
from mnist_pipeline.progress import epoch_bars
from mnist_pipeline.reports import write_history, write_json
from mnist_pipeline.timing import StageClock
from mnist_pipeline.tracking import runs, store
from mnist_pipeline.training import Augmentation, compute_for, prepare, train


def main() -> None:
    clock = StageClock("train")
    config = load_config()
    paths, data, tracking = config.paths, config.data, config.tracking

    # Where it computes: processes (torchrun for nproc > 1), threads (shards on a CPU), deterministic GPU kernels.
    ranks, device = distributed.start(
        config.train.nproc,
        config.train.batch_size,
        resolve_device(config.train.device),
        __file__,
        before_launch=lambda: store.connect(tracking.experiment),
    )
    main_rank = ranks.is_main
    say = print if main_rank else (lambda *args: None)
    compute = compute_for(config.train, device, ranks)
    say(compute.line)
    for line in filter(None, [configure_determinism(config.train.deterministic, device)]):
        say(f"train: {line}")
    clock.mark("start-up and imports")
    # A dead tracking server fails now, not after the training.
    experiment_id = store.connect(tracking.experiment)[1] if main_rank else None
    clock.mark("store")

    # What it trains: the data, and the network from scratch or from a killed run's checkpoint.
    start = resume_point(paths.checkpoint, config.to_dict())
    for line in start.lines:
        say(f"train: {line}")
    train_split, test_split = training_splits(data, device)
    clock.mark("data")
    setup = prepare(config.train, device, len(train_split), processes=ranks.world_size, checkpoint=start.checkpoint)
    say(f"train: {setup.kernels_line}")

    # The training, in its one MLflow run: a checkpoint and a batch of metrics after every epoch.
    log_run = (
        runs.training_log(experiment_id, config, setup.history, compute.threads, on_gpu=device.type == "cuda")
        if experiment_id is not None  # the main rank
        else contextlib.nullcontext(runs.QuietLog())
    )
    with log_run as log:
        processes = f" in {ranks.world_size} processes" if ranks.distributed else ""
        say(
            f"train: {config.train.model} network ({parameter_count(setup.model):,} parameters), {len(train_split)} "
            f"images, {config.train.epochs} epochs on {device}{processes}; MLflow run {log.run_id}"
        )
        for note in log.notes:
            say(f"train: {note}")

        def end_of_epoch(history):  # the checkpoint first: an epoch in MLflow is always one a resume will not redo
            save_checkpoint(
                paths.checkpoint,
                model=setup.model,
                optimizer=setup.optimizer,
                generator=setup.generator,
                model_config=setup.model_config,
                config=config.to_dict(),
                history=history,
                schedule=setup.schedule,
            )
            log.epoch(history[-1])

        clock.mark("model, optimizer and run")
        started = time.perf_counter()
        history = train(
            setup,
            train_split,
            test_split,
            config.train,
            compute=compute,
            augmentation=Augmentation(config.augment, blank_value(data.mean, data.std)),
            progress=epoch_bars(config.train.epochs) if main_rank else None,
            on_epoch_end=end_of_epoch if main_rank else None,
        )
        train_seconds = time.perf_counter() - started
        clock.mark("training")
        distributed.shutdown()
        if not main_rank:
            return

        # The results: no timing in them, so the same params write the same bytes (MLflow has the times).
        last = history[-1]
        write_history(paths.history, history)
        write_json(paths.train_metrics, {"epochs": last.epoch, **last.as_metrics()})
        print(f"train: {train_seconds:.1f} s; test accuracy after epoch {last.epoch}: {last.test_accuracy:.2%}")
        print(f"train: checkpoint {paths.checkpoint}, history {paths.history}")
        model_uri = None
        if tracking.log_model:  # raw pixels in, probabilities out; the register stage registers it if it is the best
            model_uri = runs.log_model(
                served_copy(setup.model, setup.model_config, data.mean, data.std),
                raw_pixels(test_split.images[:4], data.mean, data.std).numpy(),
            )
            print(f"train: logged model {model_uri}")
        clock.mark("model logging")
        log.finish(last.epoch, train_seconds, clock.total(), model_uri)
    clock.mark("closing the run")
    clock.report()


if __name__ == "__main__":
    run_stage(main)
