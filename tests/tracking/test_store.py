"""The MLflow store: where it is, and one line on what is wrong with it before any training."""

import contextlib
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from mnist_pipeline.tracking import store

from conftest import require


def test_store_is_at_the_dvc_root_not_the_working_directory(local_store, monkeypatch, tmp_path_factory):
    monkeypatch.chdir(tmp_path_factory.mktemp("dvc-exp-tempdir"))
    assert store.tracking_uri() == f"sqlite:///{local_store / 'mlflow.db'}?timeout=60"


def test_environment_overrides_the_store(local_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert store.tracking_uri() == "http://127.0.0.1:5999"


def test_connect_creates_the_experiment_once_with_artifacts_beside_the_store(local_store):
    client, first = store.connect("exp-a")
    _, second = store.connect("exp-a")
    assert first == second
    location = client.get_experiment(first).artifact_location
    assert location == (local_store / "mlartifacts").as_uri()


def test_the_experiment_says_it_is_model_training_when_created_and_when_found_without_a_kind(local_store):
    client, created = store.connect("exp-new")
    assert client.get_experiment(created).tags[store.EXPERIMENT_KIND_TAG] == "custom_model_development"
    # An experiment an older version of this project created, without a kind: the next connect adds it.
    older = MlflowClient(store.tracking_uri()).create_experiment("exp-old")
    assert store.EXPERIMENT_KIND_TAG not in client.get_experiment(older).tags
    _, found = store.connect("exp-old")
    assert found == older and client.get_experiment(older).tags[store.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_a_kind_someone_chose_in_the_ui_is_kept(local_store):
    chosen = MlflowClient(store.tracking_uri()).create_experiment(
        "exp-chosen", tags={store.EXPERIMENT_KIND_TAG: "genai_development"}
    )
    client, found = store.connect("exp-chosen")
    assert found == chosen and client.get_experiment(chosen).tags[store.EXPERIMENT_KIND_TAG] == "genai_development"


def test_an_unreachable_server_fails_fast_with_a_clear_error(local_store, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(
        store.TrackingError,
        match=f"MLflow store http://127.0.0.1:{port}: unreachable \\(Connection refused\\); start it, or fix or unset MLFLOW_TRACKING_URI",
    ) as caught:
        store.connect("exp-e")
    assert "\n" not in str(caught.value)
    # "Fast" is the retry settings tracking sets: about 4 s here. MLflow's own (7 retries) take about 4 minutes,
    # and the default training they guard about 70 s on 2 cores (benchmarks/results/train_speed.json).
    elapsed = time.monotonic() - started
    print(f"failed after {elapsed:.1f} s")
    assert elapsed < 30


@pytest.fixture(scope="module")
def valid_store(tmp_path_factory):
    """A valid mlflow.db, made once under a URI of its own: MLflow caches a store it has opened, per URI."""
    db = tmp_path_factory.mktemp("valid-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").create_experiment("exp-h")
    return db


@pytest.fixture
def store_file(local_store, valid_store):
    """The test's store: a copy of the valid one, for the test to damage."""
    db = local_store / "mlflow.db"
    shutil.copy(valid_store, db)
    return db


def _connect_fails(expected: str) -> None:
    with pytest.raises(store.TrackingError) as caught:
        store.connect("exp-h")
    assert str(caught.value) == expected  # one line: PipelineError's contract


def test_a_truncated_store_is_called_damaged(store_file):
    store_file.write_bytes(store_file.read_bytes()[: store_file.stat().st_size // 2])
    _connect_fails(
        f"MLflow store sqlite:///{store_file}: database disk image is malformed; move it aside or restore a backup"
    )


def test_a_store_from_a_newer_mlflow_says_so(store_file):
    expected = _alembic_version(store_file)
    _set_alembic_version(store_file, "ffffffffffff")  # a migration the installed MLflow does not have
    _connect_fails(
        f"MLflow store sqlite:///{store_file}: its schema version ffffffffffff is newer than "
        f"mlflow {mlflow.__version__} uses ({expected}); use the newer MLflow that wrote it, "
        "or move it aside to start a new store"
    )


def test_a_store_the_user_may_not_write_is_called_read_only(store_file):
    # chmod a-w stops a normal user. Root writes anyway (CAP_DAC_OVERRIDE), so as root the check runs
    # in a process without that capability: root then obeys the mode bits as any owner would.
    store_file.chmod(0o444)
    expected = (
        f"error: MLflow store sqlite:///{store_file}: attempt to write a readonly database; "
        "make the file and its folder writable, or move it aside\n"
    )
    command = [
        sys.executable,
        "-c",
        "from mnist_pipeline import cli; from mnist_pipeline.tracking import store; cli.run_stage(lambda: store.connect('exp-h'))",
    ]
    if os.geteuid() == 0:
        require(
            shutil.which("setpriv"),
            "setpriv, to run as root without CAP_DAC_OVERRIDE",
            "apt-get install util-linux (Debian has it by default)",
        )
        command = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", *command]
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert (done.returncode, done.stderr) == (2, expected)


def test_an_immutable_store_is_called_read_only_even_for_root(store_file):
    chattr = shutil.which("chattr")
    immutable = subprocess.run([chattr, "+i", str(store_file)], capture_output=True, text=True) if chattr else None
    require(
        immutable is not None and immutable.returncode == 0,
        f"chattr +i on {store_file.parent} ({immutable.stderr.strip() if immutable else 'no chattr'})",
        "run as root on a file system with the immutable flag (ext4, as CI's); overlay file systems refuse it",
    )
    try:
        with pytest.raises(PermissionError):
            store_file.open("ab")  # really read-only, for root too
        _connect_fails(
            f"MLflow store sqlite:///{store_file}: attempt to write a readonly database; "
            "make the file and its folder writable, or move it aside"
        )
    finally:
        subprocess.run(["chattr", "-i", str(store_file)], check=True)


@pytest.mark.parametrize("lock", ["EXCLUSIVE", "IMMEDIATE"])  # blocks everyone / only other writers
def test_a_store_locked_past_its_timeout_is_called_locked(store_file, monkeypatch, lock):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store_file}?timeout=1")
    with contextlib.closing(sqlite3.connect(store_file, isolation_level=None)) as holder:
        holder.execute(f"BEGIN {lock}")
        started = time.monotonic()
        _connect_fails(
            f"MLflow store sqlite:///{store_file}: database is locked; another process held its lock "
            "for the whole 1 s timeout: let that process finish or stop it, then run again"
        )
        print(f"failed after {time.monotonic() - started:.1f} s")
        holder.execute("ROLLBACK")
    _, experiment_id = store.connect("exp-h")  # the lock released, the same store works
    assert experiment_id


def _alembic_version(db) -> str:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        return connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def _set_alembic_version(db, version: str) -> None:
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        connection.execute("UPDATE alembic_version SET version_num = ?", (version,))


def test_a_password_in_the_tracking_uri_is_never_shown(local_store, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cretPW@127.0.0.1:{port}")
    with pytest.raises(store.TrackingError) as caught:
        store.connect("exp-secret")
    assert "s3cretPW" not in str(caught.value) and f"MLflow store http://alice:***@127.0.0.1:{port}: " in str(
        caught.value
    )
