"""The registry's champion: whole-test-set scores only, the best of every version however promotions interleave,
failures finished by the next try."""

import re

import mlflow
import mlflow.pyfunc
import pytest
import sqlalchemy.exc
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
from mlflow.tracking import MlflowClient

from mnist_pipeline.config import CHAMPION_ALIAS
from mnist_pipeline.tracking import inputs, lineage, registry, runs, store


class _Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


DIGEST = lineage.DataDigest("b6c29e96813679dd8c451c9b5ca86e2c.dir", "dvc.lock")


def _run_with_model(experiment: str, accuracy: float, test_images: int | None = None) -> tuple[str, str]:
    """A finished run as the stages leave one: its data inputs (the test set whole, or its first `test_images`),
    an `eval_accuracy` and a logged model. Returns (run id, model URI)."""
    data_dir = lineage.repo_root() / "data" / "mnist"
    data_dir.mkdir(parents=True, exist_ok=True)
    _, experiment_id = store.connect(experiment)
    with runs.training_run(experiment_id, {}) as run_id:
        inputs.log_data_inputs(str(data_dir), DIGEST, {"training": None, "test": test_images})
        mlflow.log_metric("eval_accuracy", accuracy)
        # pip_requirements listed: no inference
        info = mlflow.pyfunc.log_model(name="model", python_model=_Constant(), pip_requirements=[])
    return run_id, info.model_uri


def _champion(client, name: str) -> tuple[int, int]:
    """The champion's version and how many versions the model has."""
    return (
        client.get_model_version_by_alias(name, CHAMPION_ALIAS).version,
        len(client.search_model_versions(f"name = '{name}'")),
    )


def _promote(experiment: str, run: tuple[str, str]) -> str:
    promotion = registry.promote_if_best(experiment, *run, "digits")
    assert "\n" not in promotion.message
    return promotion.message if promotion.promoted else f"kept: {promotion.message}"


def test_the_first_run_becomes_champion_and_only_a_better_one_replaces_it(local_store):
    assert (
        _promote("exp-g", _run_with_model("exp-g", 0.90))
        == "best so far: registered as digits version 1 (alias champion)"
    )
    client, _ = store.connect("exp-g")
    assert _champion(client, "digits") == (1, 1)
    assert _promote("exp-g", _run_with_model("exp-g", 0.85)) == (
        "kept: the champion stays: version 1, eval_accuracy 0.9000 against this run's 0.8500"
    )
    assert _champion(client, "digits") == (1, 1)
    assert (
        _promote("exp-g", _run_with_model("exp-g", 0.95))
        == "best so far: registered as digits version 2 (alias champion)"
    )
    assert _champion(client, "digits") == (2, 2)


def test_a_registered_model_without_the_alias_has_no_champion_yet(local_store):
    run = _run_with_model("exp-h", 0.5)
    client, _ = store.connect("exp-h")
    client.create_registered_model("digits")  # registered by hand, no version, no alias
    assert _promote("exp-h", run) == "best so far: registered as digits version 1 (alias champion)"
    assert _champion(client, "digits") == (1, 1)


def test_a_run_scored_on_a_slice_of_the_test_set_never_takes_the_champion(local_store):
    """Twenty images at 100% must not beat a model scored on all 10,000: only whole-test-set scores compete."""
    client, _ = store.connect("exp-s")
    _promote("exp-s", _run_with_model("exp-s", 0.98))
    assert _promote("exp-s", _run_with_model("exp-s", 1.0, test_images=20)) == (
        "kept: not compared with the champion: scored on mnist-test[:20]; only runs scored on the whole test set "
        "(mnist-test, data.max_test_images: null) compete"
    )
    assert _champion(client, "digits") == (1, 1)


def test_a_champion_scored_on_a_slice_is_replaced_by_a_run_scored_on_the_whole_test_set(local_store):
    client, _ = store.connect("exp-t")
    sliced, _ = _run_with_model("exp-t", 1.0, test_images=20)
    version = mlflow.register_model(f"runs:/{sliced}/model", "digits").version  # as the old rule let it happen
    client.set_registered_model_alias("digits", CHAMPION_ALIAS, version)
    assert _promote("exp-t", _run_with_model("exp-t", 0.97)) == (
        "best so far: registered as digits version 2 (alias champion); version 1 was scored on mnist-test[:20]"
    )
    assert _champion(client, "digits") == (2, 2)


def test_a_better_run_promoted_while_a_worse_one_moves_the_alias_ends_as_champion(local_store, monkeypatch):
    """Two register stages at once (two machines on one server, or `dvc queue start -j 2`): the worse one has
    registered its version and is about to move the alias when the better one promotes from start to end. The
    worse one's alias move then comes last, and must not leave it there."""
    client, _ = store.connect("exp-u")
    _promote("exp-u", _run_with_model("exp-u", 0.90))
    worse, better = _run_with_model("exp-u", 0.95), _run_with_model("exp-u", 0.97)
    set_alias = MlflowClient.set_registered_model_alias
    meanwhile = []

    def the_better_one_promotes_first(self, name, alias, version):
        monkeypatch.setattr(MlflowClient, "set_registered_model_alias", set_alias)  # only this once
        meanwhile.append(_promote("exp-u", better))
        return set_alias(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", the_better_one_promotes_first)
    assert _promote("exp-u", worse) == (
        "kept: registered as digits version 2, but version 3 beats it (eval_accuracy "
        "0.9700 against this run's 0.9500): the champion is version 3"
    )
    assert meanwhile == ["best so far: registered as digits version 3 (alias champion)"]
    assert _champion(client, "digits") == (3, 3)


def test_a_promotion_leaves_nothing_in_the_temporary_folder(local_store, monkeypatch):
    """A shared /tmp is anyone's: a file there can be planted (a symlink), owned by another user, or left behind."""
    import tempfile

    temporary = local_store / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    assert (
        _promote("exp-w", _run_with_model("exp-w", 0.9))
        == "best so far: registered as digits version 1 (alias champion)"
    )
    assert _promote("exp-w", _run_with_model("exp-w", 0.8)).startswith("kept: the champion stays")
    assert list(temporary.iterdir()) == []


def test_a_champion_moved_by_hand_stays_until_a_run_beats_every_version(local_store):
    """The alias moved back by hand (the best version misbehaves in production) is kept by a run that beats the
    chosen version only; a run that beats every version scored on the whole test set takes it."""
    client, _ = store.connect("exp-x")
    _promote("exp-x", _run_with_model("exp-x", 0.90))
    _promote("exp-x", _run_with_model("exp-x", 0.95))
    client.set_registered_model_alias("digits", CHAMPION_ALIAS, "1")
    assert _promote("exp-x", _run_with_model("exp-x", 0.93)) == (
        "kept: the champion stays: version 1; this run's eval_accuracy 0.9300 does not beat version 2's 0.9500"
    )
    assert _champion(client, "digits") == (1, 2)
    assert (
        _promote("exp-x", _run_with_model("exp-x", 0.97))
        == "best so far: registered as digits version 3 (alias champion)"
    )
    assert _champion(client, "digits") == (3, 3)


def test_a_registry_failure_half_way_is_one_line_and_the_next_try_finishes_it(local_store, monkeypatch):
    client, _ = store.connect("exp-v")
    run = _run_with_model("exp-v", 0.9)

    def fail(self, name, alias, version):
        raise MlflowException("bad gateway", INTERNAL_ERROR)

    with monkeypatch.context() as patch:  # the store answers registering, then fails
        patch.setattr(MlflowClient, "set_registered_model_alias", fail)
        with pytest.raises(store.TrackingError) as caught:
            registry.promote_if_best("exp-v", *run, "digits")
    assert re.fullmatch(
        r"MLflow registry sqlite:///\S+: bad gateway; version 1 registered, but the alias champion "
        r"not moved to it; run `dvc repro` again to finish",
        str(caught.value),
    )
    assert len(client.search_model_versions("name = 'digits'")) == 1
    assert CHAMPION_ALIAS not in client.get_registered_model("digits").aliases
    # `dvc repro` again: this run's version is found, not registered twice, and the alias moves to it.
    assert _promote("exp-v", run) == "best so far: registered as digits version 1 (alias champion)"
    assert _champion(client, "digits") == (1, 1)


def test_a_failure_after_the_alias_moved_is_one_line_and_the_next_try_settles_it(local_store, monkeypatch):
    client, _ = store.connect("exp-y")
    run = _run_with_model("exp-y", 0.9)
    set_alias, search = MlflowClient.set_registered_model_alias, MlflowClient.search_model_versions
    moved = []

    def set_then_remember(self, name, alias, version):
        moved.append(version)
        return set_alias(self, name, alias, version)

    def fail_once_moved(self, *args, **kwargs):
        if moved:
            raise MlflowException("bad gateway", INTERNAL_ERROR)
        return search(self, *args, **kwargs)

    with monkeypatch.context() as patch:  # the store answers the move, then fails the read after it
        patch.setattr(MlflowClient, "set_registered_model_alias", set_then_remember)
        patch.setattr(MlflowClient, "search_model_versions", fail_once_moved)
        with pytest.raises(store.TrackingError) as caught:
            registry.promote_if_best("exp-y", *run, "digits")
    assert str(caught.value).endswith(
        ": bad gateway; version 1 registered, but the alias champion not checked "
        "against the versions since; run `dvc repro` again to finish"
    )
    assert _promote("exp-y", run) == "best so far: registered as digits version 1 (alias champion)"
    assert _champion(client, "digits") == (1, 1)


STORE_FAILURES = [
    MlflowException("database is locked", TEMPORARILY_UNAVAILABLE),
    MlflowException("bad gateway", INTERNAL_ERROR),
    MlflowException(
        "Registered model alias champion not found.", INVALID_PARAMETER_VALUE
    ),  # a malformed request's code
    sqlalchemy.exc.OperationalError("SELECT", {}, Exception("database is locked")),
]


def test_a_store_failure_reading_the_champion_stops_and_leaves_the_alias(local_store, monkeypatch):
    client, _ = store.connect("exp-i")
    _promote("exp-i", _run_with_model("exp-i", 0.90))
    better = _run_with_model("exp-i", 0.99)
    for failure in STORE_FAILURES:

        def fail(self, name, failure=failure):
            raise failure

        # Under test is how we read MLflow's answer, not MLflow: the store answers with an error.
        with monkeypatch.context() as patch:
            patch.setattr(MlflowClient, "get_registered_model", fail)
            with pytest.raises(
                store.TrackingError,
                match=r"^MLflow registry sqlite:///.*: cannot read model "
                r"'digits''s champion \(.+\); nothing registered, the alias left as it was; "
                r"run `dvc repro` again$",
            ) as caught:
                registry.promote_if_best("exp-i", *better, "digits")
        assert "\n" not in str(caught.value)
        assert _champion(client, "digits") == (1, 1), failure
    # The store answers again: the better run takes over.
    assert _promote("exp-i", better) == "best so far: registered as digits version 2 (alias champion)"


# One "machine" promoting a run: it prints promote_if_best's line. With a folder as its last argument, it stops
# just before its first move of the alias, says so with a file `waiting` there, and goes on once `go` appears.
PROMOTER = """
import sys, time
from pathlib import Path
from mlflow.tracking import MlflowClient
from mnist_pipeline.tracking import registry

experiment, run_id, model_uri, model_name, *pause = sys.argv[1:]
if pause:
    set_alias = MlflowClient.set_registered_model_alias
    def wait_then_set(self, *args):
        MlflowClient.set_registered_model_alias = set_alias
        Path(pause[0], "waiting").touch()
        while not Path(pause[0], "go").exists():
            time.sleep(0.05)
        return set_alias(self, *args)
    MlflowClient.set_registered_model_alias = wait_then_set
print(registry.promote_if_best(experiment, run_id, model_uri, model_name).message)
"""


@pytest.mark.e2e
def test_two_machines_promoting_to_one_server_at_once_end_with_the_better_model_as_champion(local_store, monkeypatch):
    """Two processes, each with its own temporary folder as two machines have, promote to one MLflow server on
    PostgreSQL (the README's team server). The worse run registers first and is held just before it moves the
    alias; the better run promotes from start to end; then the worse one goes on, and its alias move is the last."""
    import subprocess
    import sys
    import time

    from conftest import REPO_ROOT, require
    from dvc_project import environment
    from servers import mlflow_server, postgres_bin, postgres_cluster

    bin_dir = postgres_bin()
    require(
        bin_dir,
        "a PostgreSQL server (/usr/lib/postgresql/*/bin/initdb)",
        "apt-get install postgresql (as .ci/run does)",
    )
    (local_store / "server").mkdir()
    with (
        postgres_cluster(bin_dir) as databases,
        mlflow_server(databases["mlflow"], local_store / "server", environment()) as url,
    ):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        client, _ = store.connect("race")
        _promote("race", _run_with_model("race", 0.90))
        worse, better = _run_with_model("race", 0.95), _run_with_model("race", 0.97)

        def promoter(run: tuple[str, str], machine: str, *pause: str) -> list[str]:
            (local_store / machine).mkdir()
            env = environment(
                MLFLOW_TRACKING_URI=url,
                DVC_ROOT=str(local_store),
                TMPDIR=str(local_store / machine),
                PYTHONPATH=str(REPO_ROOT / "src"),
            )
            return [sys.executable, "-c", PROMOTER, "race", *run, "digits", *pause], env

        held = local_store / "held"
        held.mkdir()
        command, env = promoter(worse, "machine-a", str(held))
        first = subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 300
            while not (held / "waiting").exists():
                assert first.poll() is None, first.communicate()
                assert time.monotonic() < deadline, "the first promotion never reached the alias"
                time.sleep(0.1)
            command, env = promoter(better, "machine-b")
            second = subprocess.run(command, env=env, text=True, capture_output=True, timeout=300)
        finally:
            (held / "go").touch()
            out, err = first.communicate(timeout=300)
        assert (first.returncode, second.returncode) == (0, 0), err + second.stderr
        assert second.stdout == "best so far: registered as digits version 3 (alias champion)\n"
        assert out == (
            "registered as digits version 2, but version 3 beats it (eval_accuracy 0.9700 against this "
            "run's 0.9500): the champion is version 3\n"
        )
        champion = client.get_model_version_by_alias("digits", CHAMPION_ALIAS)
        assert champion.run_id == better[0]
        assert [list((local_store / machine).iterdir()) for machine in ("machine-a", "machine-b")] == [[], []]
        mlflow.set_tracking_uri(None)  # no server URI left behind for the next tests
