"""Where the MLflow store is and whether it can be used: the URI, the connection, one line on what is wrong.

Imported first by every module that talks to MLflow: it sets MLflow's environment before MLflow loads.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from pathlib import Path

STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
CONNECT_ATTEMPTS = 4
# What kind of experiment this is, as MLflow's UI records it (its experiment-type selector writes this tag).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"  # the UI's "Model training"; GenAI is "genai_development"
# Servers that do not answer should fail the run in seconds, not after minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
# MLflow's usage telemetry fetches its config over the network from every process that logs: a call
# that offline can only wait or fail. Off unless the user turns it on (MLFLOW_DISABLE_TELEMETRY=false).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402 (after the environment above)
import sqlalchemy.exc  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from mnist_pipeline.errors import PipelineError, without_password  # noqa: E402
from mnist_pipeline.tracking.lineage import repo_root  # noqa: E402

# What a store call raises when the store, not the caller, is at fault.
STORE_ERRORS = (mlflow.exceptions.MlflowException, sqlalchemy.exc.SQLAlchemyError, OSError, sqlite3.Error)


class TrackingError(PipelineError):
    """The MLflow store cannot be reached or used."""


def tracking_uri(root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI when set, else the SQLite store at the repository root."""
    # Parallel queue workers write to the one SQLite file; wait for its lock up to a minute
    # instead of SQLite's default 5 s, so that neither loses a write.
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root or repo_root()) / STORE_FILE}?timeout=60"


def _artifact_location(uri: str, root: Path) -> str | None:
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
    root = repo_root()
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
                raise TrackingError(f"MLflow store {shown(uri)}: {reason(exc)}; {_advice(uri, exc)}") from None
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def _get_or_create_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The experiment's id, created if need be, with its kind (model training) said.

    An experiment without the kind tag gets it, one that has a kind keeps it: that is someone's
    choice in the UI's experiment-type selector, which writes the same tag. MLflow 3.17.2's UI,
    though, picks the view an experiment opens in from the browser's GenAI / Model training
    switch, not from this tag (GenAI unless the address says ?workflowType=machine_learning):
    read in its JavaScript and seen in Chromium, docs/design.md ("Which view the MLflow UI opens").
    """
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(
            name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}
        )
    if EXPERIMENT_KIND_TAG not in found.tags:
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return found.experiment_id


def sqlite_path(uri: str) -> Path | None:
    """The file of a SQLite store (None for a server or an in-memory store)."""
    if not uri.startswith("sqlite:"):
        return None
    database = sqlalchemy.engine.make_url(uri).database
    return Path(database) if database and database != ":memory:" else None


def _lock_timeout(uri: str) -> float:
    """Seconds SQLite waits for another writer's lock: the URI's ?timeout=, else the driver's 5 s."""
    if not uri.startswith("sqlite:"):
        return 0.0
    # One value (SQLAlchemy's driver refuses ?timeout=1&timeout=2 too).
    (timeout,) = sqlalchemy.engine.make_url(uri).normalized_query.get("timeout", ("5",))
    return float(timeout)


def _check_sqlite_store(uri: str) -> None:
    """Raise sqlite3.Error when an existing SQLite store is damaged, read-only or locked.

    MLflow would find out only at its first write, after the data is loaded,
    or halfway through a run. The check reads every page (milliseconds for
    this project's store) and rewrites a header field to its own value inside
    a transaction it rolls back, so the file is left as it was.
    """
    path = sqlite_path(uri)
    if path is None or not path.exists():
        return  # MLflow creates a new store on first use
    db = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=_lock_timeout(uri), isolation_level=None
    )
    try:
        if db.execute("PRAGMA quick_check(1)").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("database disk image is malformed")
        db.execute("BEGIN IMMEDIATE")  # waits for other writers up to the timeout, as MLflow would
        version = db.execute("PRAGMA user_version").fetchone()[0]
        db.execute(f"PRAGMA user_version = {int(version)}")  # a write: fails on a read-only file or folder
        db.execute("ROLLBACK")
    finally:
        db.close()


def shown(uri: str) -> str:
    """The store's URI as the user knows it, fit for an error line: a SQLite store without the driver's ?timeout=,
    a server's without its password."""
    return uri.split("?", 1)[0] if uri.startswith("sqlite:") else without_password(uri)


def _is_race(exc: Exception, waited: float, lock_timeout: float) -> bool:
    text = str(exc).lower()
    if "database is locked" in text:
        # SQLite answers "locked" at once when two writers would deadlock (that is a race); after the
        # whole timeout, another process holds the store and asking again would only wait as long again.
        return waited < lock_timeout
    return any(sign in text for sign in ("already exists", "unique constraint"))


def reason(exc: Exception) -> str:
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
    if sqlite_path(uri) is None:
        return "start it, or fix or unset MLFLOW_TRACKING_URI"
    if "malformed" in text or "not a database" in text:
        return "move it aside or restore a backup"
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return "make the file and its folder writable, or move it aside"
    if "database is locked" in text:
        return (
            f"another process held its lock for the whole {_lock_timeout(uri):g} s timeout: "
            "let that process finish or stop it, then run again"
        )
    schema = re.search(r"found version (\w+)", text)
    if schema and _known_schema(schema.group(1)):
        return f"back it up, then run mlflow db upgrade {shown(uri)}"
    if schema:
        return "use the newer MLflow that wrote it, or move it aside to start a new store"
    return "fix it or move it aside, or set MLFLOW_TRACKING_URI to another store"


def run_exists(client: MlflowClient, run_id: str) -> bool:
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
    raise TrackingError(
        f"MLflow store {shown(mlflow.get_tracking_uri())}: cannot read run {run_id} "
        f"({reason(failure)}); nothing logged; run `dvc repro` again"
    ) from None
