import contextlib
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pytest
import sqlalchemy.exc
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
from mlflow.tracking import MlflowClient

from conftest import require
from mnist_pipeline import lineage, tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh SQLite store in a fake repository root, as DVC would point at it."""
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for var in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(var, raising=False)
    yield tmp_path
    mlflow.end_run()


def test_store_is_at_the_dvc_root_not_the_working_directory(store, monkeypatch, tmp_path_factory):
    monkeypatch.chdir(tmp_path_factory.mktemp("dvc-exp-tempdir"))
    assert tracking.tracking_uri() == f"sqlite:///{store / 'mlflow.db'}?timeout=60"


def test_environment_overrides_the_store(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.tracking_uri() == "http://127.0.0.1:5999"


def test_connect_creates_the_experiment_once_with_artifacts_beside_the_store(store):
    client, first = tracking.connect("exp-a")
    _, second = tracking.connect("exp-a")
    assert first == second
    location = client.get_experiment(first).artifact_location
    assert location == (store / "mlartifacts").as_uri()


def test_training_run_is_named_and_tagged_after_the_dvc_experiment(store, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "lucky-lark")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    client, experiment_id = tracking.connect("exp-b")
    with tracking.training_run(experiment_id, {"lr": 0.05, "data.max_train_images": None}) as run_id:
        tracking.log_epoch({"test_accuracy": 0.5}, 1)
        tracking.log_epoch({"test_accuracy": 0.75}, 2)
    run = client.get_run(run_id)
    assert run.info.run_name == "lucky-lark"
    assert run.info.status == "FINISHED"
    assert run.data.tags["dvc.exp_name"] == "lucky-lark"
    assert run.data.tags["mlflow.source.git.commit"] == "abc123"
    assert run.data.params == {"lr": "0.05", "data.max_train_images": "None"}
    assert run.data.tags["reproduce.command"] == "dvc exp apply lucky-lark"
    assert "`dvc exp apply lucky-lark`" in run.data.tags["mlflow.note.content"]  # the run's description
    history = client.get_metric_history(run_id, "test_accuracy")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.75)]


def test_a_crash_marks_the_run_failed(store):
    client, experiment_id = tracking.connect("exp-c")
    with pytest.raises(RuntimeError):
        with tracking.training_run(experiment_id, {}) as run_id:
            raise RuntimeError("boom")
    assert client.get_run(run_id).info.status == "FAILED"


def test_log_results_adds_to_a_finished_run_and_skips_a_missing_one(store, tmp_path):
    client, experiment_id = tracking.connect("exp-d")
    with tracking.training_run(experiment_id, {}) as run_id:
        pass
    plot = tmp_path / "accuracy.png"
    plot.write_bytes(b"png")
    evaluation = tmp_path / "eval.json"
    evaluation.write_text("{}")
    assert tracking.log_results("exp-d", run_id, metrics={"eval_accuracy": 0.9},
                                files={"plots": (plot,), "metrics": (evaluation,)})
    assert client.get_run(run_id).data.metrics["eval_accuracy"] == 0.9
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/accuracy.png"]
    assert [a.path for a in client.list_artifacts(run_id, "metrics")] == ["metrics/eval.json"]
    assert not tracking.log_results("exp-d", "0" * 32, metrics={"eval_accuracy": 0.9})


def test_the_evaluation_metrics_come_from_evaluates_two_files():
    evaluation = {"test_accuracy": 0.98, "test_loss": 0.06, "test_images": 10000,
                  "per_class_accuracy": {str(d): 0.9 + d / 100 for d in range(10)}}
    metrics = tracking.evaluation_metrics(evaluation, {"threads": 2, "seconds": 1.25})
    assert metrics == {"eval_accuracy": 0.98, "eval_loss": 0.06, "eval_threads": 2.0, "stage_seconds/evaluate": 1.25,
                       **{f"eval_accuracy_digit_{d}": 0.9 + d / 100 for d in range(10)}}


def test_log_results_logs_metrics_and_tags_in_one_batch_and_texts_as_artifacts(store):
    client, experiment_id = tracking.connect("exp-l")
    with tracking.training_run(experiment_id, {}) as run_id:
        pass
    assert tracking.log_results("exp-l", run_id, metrics={"stage_seconds/plot": 1.5},
                                tags=tracking.evaluated_model_tags("models:/m-123"),
                                texts={tracking.LOCK_ARTIFACT: "schema: '2.0'\n"})
    run = client.get_run(run_id)
    assert run.data.metrics["stage_seconds/plot"] == 1.5 and run.data.tags["evaluate.model_id"] == "m-123"
    assert mlflow.artifacts.load_text(f"runs:/{run_id}/reproduce/dvc.lock") == "schema: '2.0'\n"
    assert tracking.evaluated_model_tags(None) == {}


def test_the_data_is_logged_as_two_dataset_inputs_named_by_slice_with_dvcs_digest(store, tmp_path):
    data_dir = tmp_path / "data" / "mnist"
    data_dir.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (data_dir / name).write_bytes(name.encode())
    client, experiment_id = tracking.connect("exp-i")
    digest = lineage.DataDigest("b6c29e96813679dd8c451c9b5ca86e2c.dir", "dvc.lock")  # 36 characters: MLflow's limit
    with tracking.training_run(experiment_id, {}) as run_id:
        tracking.log_data_inputs(str(data_dir), digest, {"training": 2000, "test": None})
    inputs = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i
              for i in client.get_run(run_id).inputs.dataset_inputs}
    training, test = inputs["training"], inputs["test"]
    assert (training.dataset.name, test.dataset.name) == ("mnist-training[:2000]", "mnist-test")
    assert training.dataset.digest == test.dataset.digest == digest.md5
    assert json.loads(training.dataset.source)["files"] == [f"{data_dir.as_posix()}/train-images-idx3-ubyte.gz",
                                                            f"{data_dir.as_posix()}/train-labels-idx1-ubyte.gz"]
    assert {t.key: t.value for t in test.tags}["images"] == "all"


def test_missing_gpu_metrics_are_explained_in_one_line():
    note = tracking.gpu_metrics_skipped()
    assert note is None or (note.startswith("GPU metrics skipped: ") and "\n" not in note)


def test_an_unreachable_server_fails_fast_with_a_clear_error(store, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(tracking.TrackingError, match=f"MLflow store http://127.0.0.1:{port}: unreachable \\(Connection refused\\); start it, or fix or unset MLFLOW_TRACKING_URI") as caught:
        tracking.connect("exp-e")
    assert "\n" not in str(caught.value)
    # "Fast" is the retry settings tracking sets: about 4 s here. MLflow's own (7 retries) take about 4 minutes,
    # and the default training they guard about 70 s on 2 cores (benchmarks/results/train_speed.json).
    elapsed = time.monotonic() - started
    print(f"failed after {elapsed:.1f} s")
    assert elapsed < 30


def test_ctrl_c_marks_the_run_killed(store):
    client, experiment_id = tracking.connect("exp-f")
    with pytest.raises(KeyboardInterrupt):
        with tracking.training_run(experiment_id, {}) as run_id:
            raise KeyboardInterrupt
    assert client.get_run(run_id).info.status == "KILLED"


def test_runs_of_dead_processes_are_marked_killed_and_live_ones_left(store):
    import subprocess
    import sys

    client, experiment_id = tracking.connect("exp-g")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    orphan = client.create_run(experiment_id, tags={tracking.PID_TAG: dead.stdout.strip(), tracking.HOST_TAG: host})
    alive = client.create_run(experiment_id, tags={tracking.PID_TAG: str(os.getpid()), tracking.HOST_TAG: host})
    elsewhere = client.create_run(experiment_id, tags={tracking.PID_TAG: dead.stdout.strip(), tracking.HOST_TAG: "other"})
    assert tracking.close_orphaned_runs(client, experiment_id) == [orphan.info.run_id]
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"
    assert client.get_run(elsewhere.info.run_id).info.status == "RUNNING"


class _Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


DIGEST = lineage.DataDigest("b6c29e96813679dd8c451c9b5ca86e2c.dir", "dvc.lock")


def _run_with_model(experiment: str, accuracy: float, test_images: int | None = None) -> tuple[str, str]:
    """A finished run as the stages leave one: its data inputs (the test set whole, or its first `test_images`),
    an `eval_accuracy` and a logged model. Returns (run id, model URI)."""
    data_dir = lineage.repo_root() / "data" / "mnist"
    data_dir.mkdir(parents=True, exist_ok=True)
    _, experiment_id = tracking.connect(experiment)
    with tracking.training_run(experiment_id, {}) as run_id:
        tracking.log_data_inputs(str(data_dir), DIGEST, {"training": None, "test": test_images})
        mlflow.log_metric("eval_accuracy", accuracy)
        # pip_requirements listed: no inference
        info = mlflow.pyfunc.log_model(name="model", python_model=_Constant(), pip_requirements=[])
    return run_id, info.model_uri


def _champion(client, name: str) -> tuple[int, int]:
    """The champion's version and how many versions the model has."""
    return (client.get_model_version_by_alias(name, tracking.CHAMPION_ALIAS).version,
            len(client.search_model_versions(f"name = '{name}'")))


def _promote(experiment: str, run: tuple[str, str]) -> str:
    promotion = tracking.promote_if_best(experiment, *run, "digits")
    assert "\n" not in promotion.message
    return promotion.message if promotion.promoted else f"kept: {promotion.message}"


def test_the_first_run_becomes_champion_and_only_a_better_one_replaces_it(store):
    assert _promote("exp-g", _run_with_model("exp-g", 0.90)) == "best so far: registered as digits version 1 (alias champion)"
    client, _ = tracking.connect("exp-g")
    assert _champion(client, "digits") == (1, 1)
    assert _promote("exp-g", _run_with_model("exp-g", 0.85)) == ("kept: the champion stays: version 1, eval_accuracy "
                                                                 "0.9000 against this run's 0.8500")
    assert _champion(client, "digits") == (1, 1)
    assert _promote("exp-g", _run_with_model("exp-g", 0.95)) == "best so far: registered as digits version 2 (alias champion)"
    assert _champion(client, "digits") == (2, 2)


def test_a_registered_model_without_the_alias_has_no_champion_yet(store):
    run = _run_with_model("exp-h", 0.5)
    client, _ = tracking.connect("exp-h")
    client.create_registered_model("digits")  # registered by hand, no version, no alias
    assert _promote("exp-h", run) == "best so far: registered as digits version 1 (alias champion)"
    assert _champion(client, "digits") == (1, 1)


def test_a_run_scored_on_a_slice_of_the_test_set_never_takes_the_champion(store):
    """Twenty images at 100% must not beat a model scored on all 10,000: only whole-test-set scores compete."""
    client, _ = tracking.connect("exp-s")
    _promote("exp-s", _run_with_model("exp-s", 0.98))
    assert _promote("exp-s", _run_with_model("exp-s", 1.0, test_images=20)) == (
        "kept: not compared with the champion: scored on mnist-test[:20]; only runs scored on the whole test set "
        "(mnist-test, data.max_test_images: null) compete")
    assert _champion(client, "digits") == (1, 1)


def test_a_champion_scored_on_a_slice_is_replaced_by_a_run_scored_on_the_whole_test_set(store):
    client, _ = tracking.connect("exp-t")
    sliced, _ = _run_with_model("exp-t", 1.0, test_images=20)
    version = mlflow.register_model(f"runs:/{sliced}/model", "digits").version  # as the old rule let it happen
    client.set_registered_model_alias("digits", tracking.CHAMPION_ALIAS, version)
    assert _promote("exp-t", _run_with_model("exp-t", 0.97)) == (
        "best so far: registered as digits version 2 (alias champion); version 1 was scored on mnist-test[:20]")
    assert _champion(client, "digits") == (2, 2)


def test_promotions_to_one_store_take_turns(store):
    """Under `dvc queue start -j 2` two plot stages must not both read the champion and both move the alias."""
    client, _ = tracking.connect("exp-u")
    run = _run_with_model("exp-u", 0.9)
    uri = mlflow.get_tracking_uri()
    outcome = []
    with tracking.promotion_lock(uri):  # another promotion holds it
        waiting = threading.Thread(target=lambda: outcome.append(tracking.promote_if_best("exp-u", *run, "digits")))
        waiting.start()
        waiting.join(timeout=1.5)
        assert waiting.is_alive() and not outcome  # it waits its turn, reading nothing yet
        with pytest.raises(tracking.TrackingError, match=r"^MLflow registry sqlite:///\S+: another promotion on this "
                           r"machine held \S+\.lock for 0\.2 s; nothing registered; run `dvc repro` again$"):
            with tracking.promotion_lock(uri, timeout=0.2):
                pass
    waiting.join(timeout=60)
    assert outcome[0].promoted and _champion(client, "digits") == (1, 1)


def test_a_registry_failure_half_way_is_one_line_and_the_next_try_finishes_it(store, monkeypatch):
    client, _ = tracking.connect("exp-v")
    run = _run_with_model("exp-v", 0.9)

    def fail(self, name, alias, version):
        raise MlflowException("bad gateway", INTERNAL_ERROR)

    with monkeypatch.context() as patch:  # the store answers registering, then fails
        patch.setattr(MlflowClient, "set_registered_model_alias", fail)
        with pytest.raises(tracking.TrackingError) as caught:
            tracking.promote_if_best("exp-v", *run, "digits")
    assert re.fullmatch(r"MLflow registry sqlite:///\S+: bad gateway; version 1 registered, but the alias champion "
                        r"not moved to it; run `dvc repro` again to finish", str(caught.value))
    assert len(client.search_model_versions("name = 'digits'")) == 1
    assert tracking.CHAMPION_ALIAS not in client.get_registered_model("digits").aliases
    # `dvc repro` again: this run's version is found, not registered twice, and the alias moves to it.
    assert _promote("exp-v", run) == "best so far: registered as digits version 1 (alias champion)"
    assert _champion(client, "digits") == (1, 1)


def test_a_transient_store_error_is_not_taken_for_a_missing_run(store, monkeypatch):
    """A locked SQLite file or a 503 is one line and a failure; only "does not exist" means the run is gone."""
    _, experiment_id = tracking.connect("exp-w")
    with tracking.training_run(experiment_id, {}) as run_id:
        pass

    def unavailable(self, run_id):
        raise MlflowException("database is locked", TEMPORARILY_UNAVAILABLE)

    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "get_run", unavailable)
        with pytest.raises(tracking.TrackingError, match=rf"^MLflow store sqlite:///\S+: cannot read run {run_id} "
                           r"\(database is locked\); nothing logged; run `dvc repro` again$"):
            tracking.log_results("exp-w", run_id, metrics={"eval_accuracy": 0.9})
        with pytest.raises(tracking.TrackingError, match=rf"cannot read run {run_id} "):
            with tracking.training_run(experiment_id, {}, resume_run_id=run_id):
                pass  # a resume must not quietly become a new run
    assert not tracking.log_results("exp-w", "0" * 32, metrics={"eval_accuracy": 0.9})  # really missing: False


STORE_FAILURES = [
    MlflowException("database is locked", TEMPORARILY_UNAVAILABLE),
    MlflowException("bad gateway", INTERNAL_ERROR),
    MlflowException("Registered model alias champion not found.", INVALID_PARAMETER_VALUE),  # a malformed request's code
    sqlalchemy.exc.OperationalError("SELECT", {}, Exception("database is locked")),
]


def test_a_store_failure_reading_the_champion_stops_and_leaves_the_alias(store, monkeypatch):
    client, _ = tracking.connect("exp-i")
    _promote("exp-i", _run_with_model("exp-i", 0.90))
    better = _run_with_model("exp-i", 0.99)
    for failure in STORE_FAILURES:
        def fail(self, name, failure=failure):
            raise failure

        # Under test is how we read MLflow's answer, not MLflow: the store answers with an error.
        with monkeypatch.context() as patch:
            patch.setattr(MlflowClient, "get_registered_model", fail)
            with pytest.raises(tracking.TrackingError, match=r"^MLflow registry sqlite:///.*: cannot read model "
                               r"'digits''s champion \(.+\); nothing registered, the alias left as it was; "
                               r"run `dvc repro` again$") as caught:
                tracking.promote_if_best("exp-i", *better, "digits")
        assert "\n" not in str(caught.value)
        assert _champion(client, "digits") == (1, 1), failure
    # The store answers again: the better run takes over.
    assert _promote("exp-i", better) == "best so far: registered as digits version 2 (alias champion)"


# A local store that cannot be used fails in connect(), before any data is loaded, with one line
# that says what to do; each case below is a real SQLite file in that state.

@pytest.fixture(scope="module")
def valid_store(tmp_path_factory):
    """A valid mlflow.db, made once under a URI of its own: MLflow caches a store it has opened, per URI."""
    db = tmp_path_factory.mktemp("valid-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").create_experiment("exp-h")
    return db


@pytest.fixture
def store_file(store, valid_store):
    """The test's store: a copy of the valid one, for the test to damage."""
    db = store / "mlflow.db"
    shutil.copy(valid_store, db)
    return db


def _connect_fails(expected: str) -> None:
    with pytest.raises(tracking.TrackingError) as caught:
        tracking.connect("exp-h")
    assert str(caught.value) == expected  # one line: PipelineError's contract


def test_a_truncated_store_is_called_damaged(store_file):
    store_file.write_bytes(store_file.read_bytes()[: store_file.stat().st_size // 2])
    _connect_fails(f"MLflow store sqlite:///{store_file}: database disk image is malformed; "
                   "move it aside or restore a backup")


def test_a_store_from_a_newer_mlflow_says_so(store_file):
    expected = _alembic_version(store_file)
    _set_alembic_version(store_file, "ffffffffffff")  # a migration the installed MLflow does not have
    _connect_fails(f"MLflow store sqlite:///{store_file}: its schema version ffffffffffff is newer than "
                   f"mlflow {mlflow.__version__} uses ({expected}); use the newer MLflow that wrote it, "
                   "or move it aside to start a new store")


def test_a_store_the_user_may_not_write_is_called_read_only(store_file):
    # chmod a-w stops a normal user. Root writes anyway (CAP_DAC_OVERRIDE), so as root the check runs
    # in a process without that capability: root then obeys the mode bits as any owner would.
    store_file.chmod(0o444)
    expected = (f"error: MLflow store sqlite:///{store_file}: attempt to write a readonly database; "
                "make the file and its folder writable, or move it aside\n")
    command = [sys.executable, "-c", "from mnist_pipeline import cli, tracking; cli.run_stage(lambda: tracking.connect('exp-h'))"]
    if os.geteuid() == 0:
        require(shutil.which("setpriv"), "setpriv, to run as root without CAP_DAC_OVERRIDE",
                "apt-get install util-linux (Debian has it by default)")
        command = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", *command]
    src = Path(tracking.__file__).parents[1]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(src)}, timeout=120)
    assert (done.returncode, done.stderr) == (2, expected)


def test_an_immutable_store_is_called_read_only_even_for_root(store_file):
    chattr = shutil.which("chattr")
    immutable = subprocess.run([chattr, "+i", str(store_file)], capture_output=True, text=True) if chattr else None
    require(immutable is not None and immutable.returncode == 0,
            f"chattr +i on {store_file.parent} ({immutable.stderr.strip() if immutable else 'no chattr'})",
            "run as root on a file system with the immutable flag (ext4, as CI's); overlay file systems refuse it")
    try:
        with pytest.raises(PermissionError):
            store_file.open("ab")  # really read-only, for root too
        _connect_fails(f"MLflow store sqlite:///{store_file}: attempt to write a readonly database; "
                       "make the file and its folder writable, or move it aside")
    finally:
        subprocess.run(["chattr", "-i", str(store_file)], check=True)


@pytest.mark.parametrize("lock", ["EXCLUSIVE", "IMMEDIATE"])  # blocks everyone / only other writers
def test_a_store_locked_past_its_timeout_is_called_locked(store_file, monkeypatch, lock):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store_file}?timeout=1")
    with contextlib.closing(sqlite3.connect(store_file, isolation_level=None)) as holder:
        holder.execute(f"BEGIN {lock}")
        started = time.monotonic()
        _connect_fails(f"MLflow store sqlite:///{store_file}: database is locked; another process held its lock "
                       "for the whole 1 s timeout: let that process finish or stop it, then run again")
        print(f"failed after {time.monotonic() - started:.1f} s")
        holder.execute("ROLLBACK")
    _, experiment_id = tracking.connect("exp-h")  # the lock released, the same store works
    assert experiment_id


def _alembic_version(db) -> str:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        return connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def _set_alembic_version(db, version: str) -> None:
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        connection.execute("UPDATE alembic_version SET version_num = ?", (version,))
