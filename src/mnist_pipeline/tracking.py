"""All MLflow code: where the store is, one run per training, what each stage logs to it."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

STORE_FILE = "mlflow.db"
PID_TAG = "pipeline.pid"  # with HOST_TAG: lets a later run tell a crashed training from a live one
HOST_TAG = "pipeline.host"
CONNECT_ATTEMPTS = 4
ARTIFACTS_DIR = "mlartifacts"
REPRODUCE_DIR = "reproduce"  # artifacts: params.yaml (train) and dvc.lock (plot, the last stage)
LOCK_ARTIFACT = f"{REPRODUCE_DIR}/dvc.lock"
REPRODUCE_TAG = "reproduce.command"
# Set by the plot stage, which reports the evaluation (evaluate itself does not import MLflow).
EVALUATED_MODEL_TAG = "evaluate.model_id"  # the logged model (m-...) the evaluate stage measured
REGISTERED_VERSION_TAG = "evaluate.registered_version"  # <name>/<version> when its evaluation registered it
# CPU, memory and (with nvidia-ml-py) GPU every 5 s, unless MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL says
# otherwise (the end-to-end tests take 1 s). MLflow's 10 s default leaves a one-epoch run on a GPU with no
# sample at all; each sample costs the sampling thread ~20 ms of CPU, 0.4% of training (docs/design.md).
SYSTEM_METRICS_INTERVAL = 5
# Servers that do not answer should fail the run in seconds, not after minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
# MLflow's usage telemetry fetches its config over the network from every process that logs: a call
# that offline can only wait or fail. Off unless the user turns it on (MLFLOW_DISABLE_TELEMETRY=false).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", str(SYSTEM_METRICS_INTERVAL))

import mlflow  # noqa: E402 (after the environment above)
import sqlalchemy.exc  # noqa: E402
from mlflow.data.dataset_source import DatasetSource  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from mnist_pipeline import lineage  # noqa: E402
from mnist_pipeline.config import CHAMPION_ALIAS  # noqa: E402
from mnist_pipeline.errors import PipelineError  # noqa: E402


class TrackingError(PipelineError):
    """The MLflow store cannot be reached or used."""


def tracking_uri(root: Optional[Path] = None) -> str:
    """MLFLOW_TRACKING_URI when set, else the SQLite store at the repository root."""
    # Parallel queue workers write to the one SQLite file; wait for its lock up to a minute
    # instead of SQLite's default 5 s, so that neither loses a write.
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root or lineage.repo_root()) / STORE_FILE}?timeout=60"


def _artifact_location(uri: str, root: Path) -> Optional[str]:
    """Artifacts of the local store live beside mlflow.db; a server decides for itself."""
    if uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri:
        return (root / ARTIFACTS_DIR).as_uri()
    return None


def connect(experiment: str) -> tuple[MlflowClient, str]:
    """Point MLflow at the store and return a client and the experiment's id.

    This talks to the store, so an unreachable server, or a local store that
    is damaged, read-only, locked or from a newer MLflow, fails here, before
    any training.
    """
    root = lineage.repo_root()
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    for attempt in range(CONNECT_ATTEMPTS):
        started = time.monotonic()
        try:
            _check_sqlite_store(uri)
            client = MlflowClient(uri)  # opening a SQLite store checks its schema version
            return client, _get_or_create_experiment(client, experiment, _artifact_location(uri, root))
        except (mlflow.exceptions.MlflowException, OSError, sqlalchemy.exc.SQLAlchemyError, sqlite3.Error) as exc:
            # Two workers creating a new store or experiment at once: one loses the race; ask again.
            if attempt + 1 == CONNECT_ATTEMPTS or not _is_race(exc, time.monotonic() - started, _lock_timeout(uri)):
                raise TrackingError(f"MLflow store {_shown(uri)}: {_reason(exc)}; {_advice(uri, exc)}") from None
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def _get_or_create_experiment(client: MlflowClient, name: str, artifact_location: Optional[str]) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def _sqlite_path(uri: str) -> Optional[Path]:
    """The file of a SQLite store (None for a server or an in-memory store)."""
    if not uri.startswith("sqlite:"):
        return None
    database = sqlalchemy.engine.make_url(uri).database
    return Path(database) if database and database != ":memory:" else None


def _lock_timeout(uri: str) -> float:
    """Seconds SQLite waits for another writer's lock: the URI's ?timeout=, else the driver's 5 s."""
    if not uri.startswith("sqlite:"):
        return 0.0
    return float(sqlalchemy.engine.make_url(uri).query.get("timeout", 5.0))


def _check_sqlite_store(uri: str) -> None:
    """Raise sqlite3.Error when an existing SQLite store is damaged, read-only or locked.

    MLflow would find out only at its first write, after the data is loaded,
    or halfway through a run. The check reads every page (milliseconds for
    this project's store) and rewrites a header field to its own value inside
    a transaction it rolls back, so the file is left as it was.
    """
    path = _sqlite_path(uri)
    if path is None or not path.exists():
        return  # MLflow creates a new store on first use
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=_lock_timeout(uri),
                         isolation_level=None)
    try:
        if db.execute("PRAGMA quick_check(1)").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("database disk image is malformed")
        db.execute("BEGIN IMMEDIATE")  # waits for other writers up to the timeout, as MLflow would
        version = db.execute("PRAGMA user_version").fetchone()[0]
        db.execute(f"PRAGMA user_version = {int(version)}")  # a write: fails on a read-only file or folder
        db.execute("ROLLBACK")
    finally:
        db.close()


def _shown(uri: str) -> str:
    """The store's URI as the user knows it: a SQLite store without the driver's ?timeout=."""
    return uri.split("?", 1)[0] if uri.startswith("sqlite:") else uri


def _is_race(exc: Exception, waited: float, lock_timeout: float) -> bool:
    text = str(exc).lower()
    if "database is locked" in text:
        # SQLite answers "locked" at once when two writers would deadlock (that is a race); after the
        # whole timeout, another process holds the store and asking again would only wait as long again.
        return waited < lock_timeout
    return any(sign in text for sign in ("already exists", "unique constraint"))


def _reason(exc: Exception) -> str:
    """The gist of a store failure: the socket or SQLite error when there is one, else the message's first line."""
    text = str(exc)
    socket_error = re.search(r"\[Errno -?\d+\] ([^\"'()]+)|(timed out)", text)
    if socket_error:
        return f"unreachable ({(socket_error.group(1) or socket_error.group(2)).strip()})"
    if isinstance(exc, sqlite3.Error):
        return text
    sqlite_error = re.search(r"\(sqlite3\.\w+\) (.+)", text)  # SQLAlchemy's wrapping of the driver's error
    if sqlite_error:
        return sqlite_error.group(1).strip()
    schema = re.search(r"found version (\w+), but expected (\w+)", text)
    if schema:
        found, expected = schema.groups()
        age = "older" if _known_schema(found) else "newer"
        return f"its schema version {found} is {age} than mlflow {mlflow.__version__} uses ({expected})"
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _known_schema(revision: str) -> bool:
    """Whether the installed MLflow has a migration to `revision` (an older schema) or not (a newer one)."""
    versions = Path(mlflow.__file__).parent / "store" / "db_migrations" / "versions"
    return any(versions.glob(f"{revision}_*.py"))


def _advice(uri: str, exc: Exception) -> str:
    """What the user can do about a store failure, by its kind."""
    text = str(exc).lower()
    if _sqlite_path(uri) is None:
        return "start it, or fix or unset MLFLOW_TRACKING_URI"
    if "malformed" in text or "not a database" in text:
        return "move it aside or restore a backup"
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return "make the file and its folder writable, or move it aside"
    if "database is locked" in text:
        return (f"another process held its lock for the whole {_lock_timeout(uri):g} s timeout: "
                "let that process finish or stop it, then run again")
    schema = re.search(r"found version (\w+)", text)
    if schema and _known_schema(schema.group(1)):
        return f"back it up, then run mlflow db upgrade {_shown(uri)}"
    if schema:
        return "use the newer MLflow that wrote it, or move it aside to start a new store"
    return "fix it or move it aside, or set MLFLOW_TRACKING_URI to another store"


def git_commit(root: Path) -> Optional[str]:
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
    return {k: v for k, v in tags.items() if v}


def _reproduce_note(command: str) -> str:
    """The run's description: how to get it back, and what else it carries for that."""
    return (f"Bring this run back: `{command}`. Its params.yaml and dvc.lock are in the artifacts, "
            f"under {REPRODUCE_DIR}/.")


def gpu_metrics_skipped() -> Optional[str]:
    """Why the system metrics hold no GPU, in one line; None when MLflow can read the GPUs."""
    try:
        import pynvml
    except ImportError:
        return "GPU metrics skipped: nvidia-ml-py is not installed (pip install -r requirements.txt)"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return f"GPU metrics skipped: NVML cannot start ({exc})"
    return None


def log_data_inputs(data_dir: str, digest: lineage.DataDigest, slices: dict[str, Optional[int]]) -> None:
    """Log the training and test data as dataset inputs of the active run, named by split and slice.

    The digest is DVC's MD5 of `data_dir` (the UI's Dataset column shows it); `slices` gives each
    context (`training`, `test`) its first-N image limit, None for the whole split.
    """
    from mlflow.data.meta_dataset import MetaDataset

    folder = Path(data_dir).as_posix()
    files = lineage.split_files(data_dir)
    datasets, contexts, tags = [], [], []
    for context, limit in slices.items():
        name = f"mnist-{context}" + (f"[:{limit}]" if limit is not None else "")
        source = FilesSource(folder, tuple(f"{folder}/{name_}" for name_ in files[context]))
        datasets.append(MetaDataset(source, name=name, digest=digest.md5))
        contexts.append(context)
        tags.append({"images": "all" if limit is None else f"first {limit}", "digest_from": digest.origin})
    mlflow.log_inputs(datasets=datasets, contexts=contexts, tags_list=tags)


def evaluated_model_tags(model_uri: Optional[str]) -> dict[str, str]:
    """The tag naming the logged model (models:/m-... -> m-...) the evaluate stage measured; none without one."""
    return {EVALUATED_MODEL_TAG: model_uri.removeprefix("models:/")} if model_uri else {}


def log_lineage(data_dir: str, slices: dict[str, Optional[int]], params_file: str | Path, on_gpu: bool) -> list[str]:
    """What the active run trained on and what reproduces it: the data (DVC's MD5) and params.yaml.

    Returns one-line notes for the user: a digest computed from the files, GPU metrics skipped.
    """
    digest = lineage.data_digest(data_dir)
    log_data_inputs(data_dir, digest, slices)
    mlflow.log_artifact(str(params_file), REPRODUCE_DIR)
    notes = [digest.note, gpu_metrics_skipped() if on_gpu else None]
    return [note for note in notes if note]


def run_name() -> Optional[str]:
    """The DVC experiment's name under `dvc exp run`; MLflow picks one otherwise."""
    return os.environ.get("DVC_EXP_NAME") or None


def log_params(params: dict[str, Any]) -> None:
    """Log flattened params of the active run; MLflow stores them as strings ("None" for null)."""
    mlflow.log_params({k: str(v) for k, v in params.items()})


def log_epoch(metrics: dict[str, float], epoch: int) -> None:
    """One batched call per epoch, so logging never slows the training steps."""
    mlflow.log_metrics(metrics, step=epoch)


def log_model(model, example_pixels) -> str:
    """Log the digit classifier (raw 0-255 pixels in, class probabilities out); return its URI.

    Saved as torch.export's graph archive (pt2): no pickle to trust, and no project code
    to ship with it. torch.export traces the model once; channels-last weights become
    contiguous first, since the archive writer expects each weight to fill its storage
    (it warns "No complete tensor found in the group" otherwise). The results are the same.
    """
    import numpy as np
    import torch

    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, 28, 28))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 10))]),
    )
    info = mlflow.pytorch.log_model(
        model.to(memory_format=torch.contiguous_format),
        name="model",
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


class FilesSource(DatasetSource):
    """Files of the repository, by their paths from its root: the UI shows the folder, the source's JSON each file."""

    def __init__(self, uri: str, files: tuple[str, ...]):
        self.uri, self.files = uri, tuple(files)

    @staticmethod
    def _get_source_type() -> str:
        return "local"

    def load(self, dst_path=None) -> str:
        return self.uri

    @staticmethod
    def _can_resolve(raw_source) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source):
        raise NotImplementedError("FilesSource is built by log_data_inputs, not resolved")

    def to_dict(self) -> dict:
        return {"uri": self.uri, "files": list(self.files)}

    @classmethod
    def from_dict(cls, source_dict: dict) -> "FilesSource":
        return cls(source_dict["uri"], tuple(source_dict.get("files", ())))


def evaluation_metrics(evaluation: dict[str, Any], eval_run: dict[str, Any]) -> dict[str, float]:
    """The run's metrics from the evaluate stage's files: eval.json (the results) and eval_run.json (its threads, seconds)."""
    metrics = {"eval_accuracy": float(evaluation["test_accuracy"]), "eval_loss": float(evaluation["test_loss"])}
    metrics.update({f"eval_accuracy_digit_{digit}": float(accuracy)
                    for digit, accuracy in evaluation["per_class_accuracy"].items()})
    metrics.update({"eval_threads": float(eval_run["threads"]), "stage_seconds/evaluate": float(eval_run["seconds"])})
    return metrics


def log_results(experiment: str, run_id: str, *, metrics: Optional[dict[str, float]] = None,
                tags: Optional[dict[str, str]] = None, files: Optional[dict[str, tuple[str | Path, ...]]] = None,
                texts: Optional[dict[str, str]] = None) -> bool:
    """Add metrics, tags and files to a finished training run (the plot stage, after evaluate, reports both).

    Metrics and tags go in one batch; `files` maps an artifact folder ("plots") to the files logged
    into it, and `texts` maps artifact paths (reproduce/dvc.lock) to their content.
    Returns False, logging nothing, when the store no longer holds the run
    (mlflow.db deleted since training): the stages' own outputs still count.
    """
    from mlflow.entities import Metric, RunTag

    client, _ = connect(experiment)
    if not _run_exists(client, run_id):
        return False
    if metrics or tags:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
                         tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])
    for artifact_path, paths in (files or {}).items():
        for path in paths:
            client.log_artifact(run_id, str(path), artifact_path)
    for artifact_file, text in (texts or {}).items():
        client.log_text(run_id, text, artifact_file)
    # Under MLFLOW_ENABLE_ASYNC_LOGGING the batch is only queued: write it now, while the store can take it
    # (MLflow's own exit handler runs too late to, and drops what is left).
    mlflow.flush_async_logging()
    return True


@contextlib.contextmanager
def training_run(experiment_id: str, params: dict[str, Any], resume_run_id: Optional[str] = None) -> Iterator[str]:
    """Start (or, when resuming, reopen) the one MLflow run of a training and yield its id.

    The run ends FINISHED only when the block completes: an error marks it
    FAILED, Ctrl-C or SIGTERM marks it KILLED, so a half-finished run is never
    mistaken for a result. Runs left RUNNING by a training that was killed
    outright (SIGKILL, power cut) are marked KILLED here, the next time.
    """
    client = MlflowClient(mlflow.get_tracking_uri())
    close_orphaned_runs(client, experiment_id)
    if resume_run_id is not None and not _run_exists(client, resume_run_id):
        resume_run_id = None  # the store was reset since: a new run it is
    tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    # Only the process that opens the run measures, for the whole host: CPU and memory are
    # machine-wide and the GPU monitor reads every GPU. Under torchrun that is rank 0 (one node).
    # Its start and stop notices are noise in the stage's output; gpu_metrics_skipped() says why no GPU.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    if resume_run_id is None:
        new_tags = run_tags()
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name(), tags={**new_tags, **tags},
                               description=_reproduce_note(new_tags[REPRODUCE_TAG]), log_system_metrics=True)
    else:
        run = mlflow.start_run(run_id=resume_run_id, tags=tags, log_system_metrics=True)
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


def _run_exists(client: MlflowClient, run_id: str) -> bool:
    """Whether the store holds run `run_id`. Only the store's "does not exist" is a no: any other failure
    (a locked SQLite file, a server answering 503) is a TrackingError, never taken for a missing run."""
    try:
        client.get_run(run_id)
        return True
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        failure: Exception = exc
    except (sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
        failure = exc
    raise TrackingError(f"MLflow store {_shown(mlflow.get_tracking_uri())}: cannot read run {run_id} "
                        f"({_reason(failure)}); nothing logged; run `dvc repro` again") from None


def logged_epochs(run_id: str, metric: str = "test_accuracy") -> set[int]:
    """The epochs (steps) of `metric` already in the run: a resumed run logs only the missing ones."""
    client = MlflowClient(mlflow.get_tracking_uri())
    return {m.step for m in client.get_metric_history(run_id, metric)}


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


FULL_TEST_SET = "mnist-test"  # the test split's dataset name when no data.max_test_images slices it
PROMOTION_WAIT = 120  # seconds a promotion waits for another one on this machine before giving up


@dataclass(frozen=True)
class Promotion:
    """What promote_if_best did: whether the run's model became the champion, and one line that says so or why not."""

    promoted: bool
    message: str


def test_set_of(run) -> Optional[tuple[str, str]]:
    """(name, digest) of the test data a run was scored on: its dataset input in the `test` context; None without one."""
    for dataset_input in run.inputs.dataset_inputs:
        if any(t.key == "mlflow.data.context" and t.value == "test" for t in dataset_input.tags):
            return dataset_input.dataset.name, dataset_input.dataset.digest
    return None


@contextlib.contextmanager
def promotion_lock(uri: str, timeout: float = PROMOTION_WAIT) -> Iterator[None]:
    """Hold this machine's lock on promotions to the store `uri`: one read-compare-move of the alias at a time.

    Two plot stages of a `dvc queue start -j 2` could otherwise both read the same champion and
    both move the alias, the worse run last. The lock is a file in the temporary folder, named
    after the store, so it covers every clone on this machine; the OS releases it if the process dies.
    """
    import fcntl
    import hashlib
    import tempfile

    name = hashlib.sha256(_shown(uri).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"mnist-pipeline-promotion-{name}.lock"
    with open(path, "a", encoding="utf-8") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TrackingError(f"MLflow registry {_shown(uri)}: another promotion on this machine held "
                                        f"{path} for {timeout:g} s; nothing registered; run `dvc repro` again") from None
                time.sleep(0.05)
        yield  # released when the file closes


def promote_if_best(experiment: str, run_id: str, model_uri: str, model_name: str,
                    metric: str = "eval_accuracy") -> Promotion:
    """Register the run's model (`model_uri`, models:/m-...) and point the `champion` alias at it
    when the run beats the current champion on the same, whole test set.

    Only runs scored on the whole test set compete: a quick trial scored on twenty images could
    otherwise reach 100% and take the alias from a better model. A champion scored on another test
    set (a slice, before this rule) cannot defend the title: a whole-set run replaces it. Moving the
    alias by hand (UI or client) is respected: a run must beat whatever version the alias points at.
    Promotions to one store on this machine take turns (promotion_lock). If the registry fails
    half-way (a version registered, the alias not moved), the next `dvc repro` finds this run's
    version and moves the alias to it, instead of registering another.
    """
    client, _ = connect(experiment)
    uri = mlflow.get_tracking_uri()
    try:
        run = client.get_run(run_id)
    except (mlflow.exceptions.MlflowException, sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
        raise TrackingError(f"MLflow store {_shown(uri)}: cannot read run {run_id} ({_reason(exc)}); "
                            "nothing registered; run `dvc repro` again") from None
    score, scored_on = run.data.metrics.get(metric), test_set_of(run)
    if score is None:
        return Promotion(False, f"not compared with the {CHAMPION_ALIAS}: the run has no {metric}")
    if scored_on is None or scored_on[0] != FULL_TEST_SET:
        where = scored_on[0] if scored_on else "an unknown test set"
        return Promotion(False, f"not compared with the {CHAMPION_ALIAS}: scored on {where}; only runs scored on "
                                f"the whole test set ({FULL_TEST_SET}, data.max_test_images: null) compete")
    with promotion_lock(uri):
        champion = _read_champion(client, model_name, metric)
        if champion is not None and champion[1] == scored_on and score <= champion[2]:
            return Promotion(False, f"the {CHAMPION_ALIAS} stays: version {champion[0]}, {metric} {champion[2]:.4f} "
                                    f"against this run's {score:.4f}")
        version = _register_and_point(client, uri, run_id, model_uri, model_name)
    replaced = ""
    if champion is not None and champion[1] != scored_on:
        was = champion[1][0] if champion[1] else "an unknown test set"
        replaced = f"; version {champion[0]} was scored on {was}"
    return Promotion(True, f"best so far: registered as {model_name} version {version} (alias {CHAMPION_ALIAS}){replaced}")


def _read_champion(client: MlflowClient, model_name: str, metric: str) -> Optional[tuple[str, Optional[tuple[str, str]], float]]:
    """The champion's version, the test set it was scored on, and its score; None when there is no champion yet."""
    # Only "no such model" or "no such alias" means there is no champion yet. Any other failure (a locked database,
    # a server hiccup) stops here: taking it for "none" would put a worse run over the real champion.
    # The alias is read off the registered model, not by get_model_version_by_alias, whose "no such alias"
    # (INVALID_PARAMETER_VALUE) is also its answer to a malformed request.
    try:
        try:
            aliases = client.get_registered_model(model_name).aliases
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            aliases = {}
        version = aliases.get(CHAMPION_ALIAS)
        if version is None:
            return None
        champion_run = client.get_run(client.get_model_version(model_name, version).run_id)
    except (mlflow.exceptions.MlflowException, sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
        raise TrackingError(
            f"MLflow registry {_shown(mlflow.get_tracking_uri())}: cannot read model {model_name!r}'s {CHAMPION_ALIAS} "
            f"({_reason(exc)}); nothing registered, the alias left as it was; run `dvc repro` again"
        ) from None
    return str(version), test_set_of(champion_run), champion_run.data.metrics.get(metric, float("-inf"))


def _register_and_point(client: MlflowClient, uri: str, run_id: str, model_uri: str, model_name: str) -> str:
    """This run's version of the model (registered now, or found from an earlier try), with the alias on it."""
    version = None
    try:
        found = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
        if found:  # an earlier promotion of this run registered it, then failed before the alias moved
            version = str(max(int(v.version) for v in found))
        else:
            # By the logged model's own URI: a runs:/ URI makes MLflow 3 look for run artifacts first and warn.
            version = str(mlflow.register_model(model_uri, model_name).version)
        client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version)
        client.set_tag(run_id, REGISTERED_VERSION_TAG, f"{model_name}/{version}")
        mlflow.flush_async_logging()  # the tag, under MLFLOW_ENABLE_ASYNC_LOGGING (see log_results)
    except (mlflow.exceptions.MlflowException, sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
        done = (f"version {version} registered, but the alias {CHAMPION_ALIAS} not moved to it"
                if version else "nothing registered, the alias left as it was")
        raise TrackingError(f"MLflow registry {_shown(uri)}: {_reason(exc)}; {done}; "
                            "run `dvc repro` again to finish") from None
    return version
