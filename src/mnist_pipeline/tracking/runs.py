"""A training's one MLflow run: its start (name, tags, description), resume, end status, orphans, and
what the train stage logs to it as it goes (params, per-epoch metrics, thread counts, the model)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mnist_pipeline.tracking.store import MlflowClient, mlflow, run_exists  # first: MLflow's environment

# isort: split
from mnist_pipeline.config import PARAMS_FILE, Config, flatten, training_config
from mnist_pipeline.records import EpochResult
from mnist_pipeline.reports import read_run_id, write_json
from mnist_pipeline.tracking import inputs, lineage, system_metrics

PID_TAG = "pipeline.pid"  # with HOST_TAG: lets a later run tell a crashed training from a live one
HOST_TAG = "pipeline.host"
REPRODUCE_TAG = "reproduce.command"
# A search (mnist_pipeline.search.trials) runs each trial with these set: the trial's run is tagged with its study and
# trial, and is a child of the study's summary run. They change no result, only the run's place in MLflow.
STUDY_ENV, TRIAL_ENV, PARENT_ENV = (
    "MNIST_PIPELINE_SEARCH_STUDY",
    "MNIST_PIPELINE_SEARCH_TRIAL",
    "MNIST_PIPELINE_SEARCH_PARENT",
)
STUDY_TAG, TRIAL_TAG = "search.study", "search.trial"
THREADS_TAG = "train.threads"  # each start's thread count (record_threads); speed only, never the numbers
# A run's first metric is the one MLflow 3.17's compare view plots against the params (the first key of the run's
# metrics, which a SQLite store returns in the order they were first logged): the result a comparison is about.
HEADLINE_METRIC = "test_accuracy"


def git_commit(root: Path) -> str | None:
    """The commit the run was made from: DVC's baseline under `dvc exp run`, else git HEAD."""
    baseline = os.environ.get("DVC_EXP_BASELINE_REV")
    if baseline:
        return baseline
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def run_tags() -> dict[str, str]:
    """Tags that tie a run to its code and its DVC experiment."""
    tags = {"mlflow.source.type": "PROJECT", "dvc.stage": os.environ.get("DVC_STAGE", "")}
    commit = git_commit(Path.cwd())
    if commit:
        tags["mlflow.source.git.commit"] = commit
    exp_name = os.environ.get("DVC_EXP_NAME")
    if exp_name:
        tags["dvc.exp_name"] = exp_name
    tags[REPRODUCE_TAG] = lineage.reproduce_command(exp_name, commit)
    tags.update(
        {
            STUDY_TAG: os.environ.get(STUDY_ENV, ""),
            TRIAL_TAG: os.environ.get(TRIAL_ENV, ""),
            "mlflow.parentRunId": os.environ.get(PARENT_ENV, ""),
        }
    )
    return {k: v for k, v in tags.items() if v}


def _reproduce_note(command: str) -> str:
    """The run's description: how to get it back, and what else it carries for that."""
    return (
        f"Bring this run back: `{command}`. Its params.yaml and dvc.lock are in the artifacts, "
        f"under {lineage.REPRODUCE_DIR}/."
    )


def run_name() -> str | None:
    """The DVC experiment's name under `dvc exp run`; MLflow picks one otherwise."""
    return os.environ.get("DVC_EXP_NAME") or None


def resumable(client: MlflowClient, run_id: str, params: dict[str, Any]) -> bool:
    """Whether run `run_id` is an unfinished training logged with these `params` (a subset of its params).

    The run id comes from a file beside the checkpoint that a later training may have rewritten before
    it was killed too: only a run whose params are the checkpoint's continues.
    """
    if not run_exists(client, run_id):
        return False  # the store was reset since: a new run it is
    run = client.get_run(run_id)
    logged = run.data.params
    return run.info.status != "FINISHED" and all(logged.get(key) == str(value) for key, value in params.items())


@contextlib.contextmanager
def training_run(
    experiment_id: str,
    params: dict[str, Any],
    resume_run_id: str | None = None,
    resume_params: dict[str, Any] | None = None,
) -> Iterator[str]:
    """Start (or, when resuming, reopen) the one MLflow run of a training and yield its id.

    `resume_run_id` continues when that run is resumable with `resume_params` (the params that decide
    the training's numbers); otherwise the training gets a new run.

    The run ends FINISHED only when the block completes: an error marks it
    FAILED, Ctrl-C or SIGTERM marks it KILLED, so a half-finished run is never
    mistaken for a result. Runs left RUNNING by a training that was killed
    outright (SIGKILL, power cut) are marked KILLED here, the next time.
    """
    client = MlflowClient(mlflow.get_tracking_uri())
    close_orphaned_runs(client, experiment_id)
    if resume_run_id is not None and not resumable(client, resume_run_id, resume_params or {}):
        resume_run_id = None
    tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    # Not MLflow's sampling thread, even when MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING asks for it: the stage
    # logs a sample of the machine with each epoch's results (mnist_pipeline.tracking.system_metrics says why).
    if resume_run_id is None:
        new_tags = run_tags()
        run = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=run_name(),
            tags={**new_tags, **tags},
            description=_reproduce_note(new_tags[REPRODUCE_TAG]),
            log_system_metrics=False,
        )
    else:
        run = mlflow.start_run(run_id=resume_run_id, tags=tags, log_system_metrics=False)
    status = "FAILED"
    try:
        if resume_run_id is None:
            log_params(params)
        yield run.info.run_id
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        mlflow.end_run(status)


def process_alive(pid: int) -> bool:
    """Whether process `pid` still exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def close_orphaned_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """Mark KILLED the runs still RUNNING whose training process on this host is gone; return their ids."""
    host = socket.gethostname()
    orphans = [
        run.info.run_id
        for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'")
        if run.data.tags.get(HOST_TAG) == host
        and run.data.tags.get(PID_TAG, "").isdigit()
        and not process_alive(int(run.data.tags[PID_TAG]))
    ]
    for run_id in orphans:
        client.set_terminated(run_id, "KILLED")
    return orphans


def log_params(params: dict[str, Any]) -> None:
    """Log flattened params of the active run; MLflow stores them as strings ("None" for null)."""
    mlflow.log_params({k: str(v) for k, v in params.items()})


def log_epoch(metrics: dict[str, float], epoch: int) -> None:
    """One batched call per epoch, so logging never slows the training steps; HEADLINE_METRIC first in the batch."""
    # Stable: the other metrics keep their order behind it.
    mlflow.log_metrics(dict(sorted(metrics.items(), key=lambda item: item[0] != HEADLINE_METRIC)), step=epoch)


def record_threads(threads: int, first_epoch: int) -> None:
    """Tag the active run with the thread count this start of the training computes on, after earlier starts'.

    A setting, not a result: a tag, where MLflow's compare view does not plot it. A resumed training may
    run on another count, so each start adds itself: `2 from epoch 1`, then `2 from epoch 1, 1 from epoch 4`.
    Call it once per start: it reads the earlier starts off the run as the start found it.
    """
    this_start = f"{threads} from epoch {first_epoch}"
    run = mlflow.active_run()
    assert run is not None, "record_threads tags the active run: call it inside training_run"
    earlier = run.data.tags.get(THREADS_TAG)
    mlflow.set_tag(THREADS_TAG, f"{earlier}, {this_start}" if earlier else this_start)


def logged_epochs(run_id: str, metric: str = "test_accuracy") -> set[int]:
    """The epochs (steps) of `metric` already in the run: a resumed run logs only the missing ones."""
    client = MlflowClient(mlflow.get_tracking_uri())
    return {m.step for m in client.get_metric_history(run_id, metric)}


class TrainingLog:
    """What the train stage logs to its training's run as it goes; made by training_log, one per start."""

    def __init__(self, run_id: str, run_file: str | Path, experiment: str, notes: list[str]):
        self.run_id, self.notes = run_id, notes  # notes: what the stage says of the run's lineage, one line each
        self._run_file, self._experiment = run_file, experiment
        self._machine = system_metrics.Sampler()  # each epoch's sample covers the time since the one before

    def epoch(self, result: EpochResult) -> None:
        """An epoch's results and a sample of the machine, in one batch."""
        log_epoch({**result.as_metrics(), **self._machine.sample()}, result.epoch)

    def finish(self, last_epoch: int, train_seconds: float, stage_seconds: float, model_uri: str | None) -> None:
        """The training's times, and the run file with the logged model's URI, which the register stage registers."""
        log_epoch({"train_seconds": train_seconds, "stage_seconds/train": stage_seconds}, last_epoch)
        write_run_file(self._run_file, self.run_id, self._experiment, model_uri)


class QuietLog:
    """A TrainingLog for the ranks of several processes that do not log (rank 0 does): it does nothing."""

    run_id: str | None = None
    notes: list[str] = []

    def epoch(self, result: EpochResult) -> None:
        """Nothing."""

    def finish(self, last_epoch: int, train_seconds: float, stage_seconds: float, model_uri: str | None) -> None:
        """Nothing."""


def write_run_file(path: str | Path, run_id: str, experiment: str, model_uri: str | None) -> None:
    """paths.mlflow_run: the training's run (an id, not a result: in git, not in dvc.lock), and its logged model."""
    write_json(path, {"run_id": run_id, "experiment": experiment, "model_uri": model_uri})


@contextlib.contextmanager
def training_log(
    experiment_id: str, config: Config, history: Sequence[EpochResult], threads: int, on_gpu: bool
) -> Iterator[TrainingLog]:
    """Open the training's one run (reopen a resumed training's) and bring it up to date; yield its TrainingLog.

    The run file is written at once, before the first checkpoint, so that a resume finds this run; the
    register stage's record is deleted, since this run has yet to get its evaluation (dvc.yaml says why).
    A resume logs the epochs the killed run finished but did not get to log, and adds its thread count.
    """
    whole = config.to_dict()
    resumed_run = read_run_id(config.paths.mlflow_run) if history else None
    with training_run(
        experiment_id, flatten(whole), resumed_run, resume_params=flatten(training_config(whole))
    ) as run_id:
        write_run_file(config.paths.mlflow_run, run_id, config.tracking.experiment, None)
        Path(config.paths.registered).unlink(missing_ok=True)
        record_threads(threads, len(history) + 1)
        already_logged = logged_epochs(run_id)
        for result in history:
            if result.epoch not in already_logged:
                log_epoch(result.as_metrics(), result.epoch)
        data = config.data
        slices = {"training": data.training_images, "test": data.max_test_images}
        if data.validation_images:
            slices["validation"] = data.validation_images
        notes = inputs.log_lineage(data.dir, slices, PARAMS_FILE, on_gpu=on_gpu)
        yield TrainingLog(run_id, config.paths.mlflow_run, config.tracking.experiment, notes)


class _PytorchOnCpu:
    """mlflow.pytorch as the flavor Model.log saves with, except that the pyfunc loads the model on the CPU.

    MLflow's pt2 loader puts a model on "cuda" whenever torch sees a GPU, unless the model's config names a
    device, and refuses a pt2 archive whose weights were exported on the CPU: on a GPU machine
    pyfunc.load_model, predict.py and `mlflow models serve` would all fail. mlflow.pytorch.save_model
    writes `device: null` into the pyfunc flavor's model_config and takes no argument to change it, so this
    writes `cpu` there once it has saved. The model is small: the CPU answers in milliseconds.
    """

    __name__ = "mlflow.pytorch"  # the flavor MLflow records for the logged model

    @staticmethod
    def save_model(path, mlflow_model, **kwargs):
        from mlflow.pyfunc import FLAVOR_NAME as PYFUNC
        from mlflow.pyfunc import MODEL_CONFIG

        mlflow.pytorch.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
        mlflow_model.flavors[PYFUNC][MODEL_CONFIG] = {"device": "cpu"}
        mlflow_model.save(str(Path(path) / "MLmodel"))  # the file MLflow reads a model's flavors from


def log_model(model, example_pixels) -> str:
    """Log the digit classifier (raw 0-255 pixels in, class probabilities out); return its URI.

    Saved as torch.export's graph archive (pt2): no pickle to trust, and no project code
    to ship with it. torch.export traces the model once; channels-last weights become
    contiguous first, since the archive writer expects each weight to fill its storage
    (it warns "No complete tensor found in the group" otherwise). The results are the same.
    It loads on the CPU on any machine, a GPU one too (_PytorchOnCpu).
    """
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import Model, ModelSignature
    from mlflow.types import Schema, TensorSpec

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, 28, 28))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 10))]),
    )
    # mlflow.pytorch.log_model's own call, with the flavor above.
    info = Model.log(
        None,  # artifact_path: deprecated for `name`, and still positional
        name="model",
        flavor=_PytorchOnCpu,
        pytorch_model=model.to(memory_format=torch.contiguous_format),
        serialization_format="pt2",
        signature=signature,
        input_example=example_pixels,
        # Listed, not inferred: inference loads the model in a subprocess and takes seconds.
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            f"mlflow=={mlflow.__version__}",
            f"numpy=={np.__version__}",
        ],
    )
    return info.model_uri
