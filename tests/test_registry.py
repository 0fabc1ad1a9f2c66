"""The registry's champion: whole-test-set scores only, one promotion at a time, failures finished by the next try."""

import re
import threading

import mlflow
import mlflow.pyfunc
import pytest
import sqlalchemy.exc
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
from mlflow.tracking import MlflowClient

from mnist_pipeline import datasets, lineage, registry, runs, store
from mnist_pipeline.config import CHAMPION_ALIAS


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
        datasets.log_data_inputs(str(data_dir), DIGEST, {"training": None, "test": test_images})
        mlflow.log_metric("eval_accuracy", accuracy)
        # pip_requirements listed: no inference
        info = mlflow.pyfunc.log_model(name="model", python_model=_Constant(), pip_requirements=[])
    return run_id, info.model_uri


def _champion(client, name: str) -> tuple[int, int]:
    """The champion's version and how many versions the model has."""
    return (client.get_model_version_by_alias(name, CHAMPION_ALIAS).version,
            len(client.search_model_versions(f"name = '{name}'")))


def _promote(experiment: str, run: tuple[str, str]) -> str:
    promotion = registry.promote_if_best(experiment, *run, "digits")
    assert "\n" not in promotion.message
    return promotion.message if promotion.promoted else f"kept: {promotion.message}"


def test_the_first_run_becomes_champion_and_only_a_better_one_replaces_it(local_store):
    assert _promote("exp-g", _run_with_model("exp-g", 0.90)) == "best so far: registered as digits version 1 (alias champion)"
    client, _ = store.connect("exp-g")
    assert _champion(client, "digits") == (1, 1)
    assert _promote("exp-g", _run_with_model("exp-g", 0.85)) == ("kept: the champion stays: version 1, eval_accuracy "
                                                                 "0.9000 against this run's 0.8500")
    assert _champion(client, "digits") == (1, 1)
    assert _promote("exp-g", _run_with_model("exp-g", 0.95)) == "best so far: registered as digits version 2 (alias champion)"
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
        "(mnist-test, data.max_test_images: null) compete")
    assert _champion(client, "digits") == (1, 1)


def test_a_champion_scored_on_a_slice_is_replaced_by_a_run_scored_on_the_whole_test_set(local_store):
    client, _ = store.connect("exp-t")
    sliced, _ = _run_with_model("exp-t", 1.0, test_images=20)
    version = mlflow.register_model(f"runs:/{sliced}/model", "digits").version  # as the old rule let it happen
    client.set_registered_model_alias("digits", CHAMPION_ALIAS, version)
    assert _promote("exp-t", _run_with_model("exp-t", 0.97)) == (
        "best so far: registered as digits version 2 (alias champion); version 1 was scored on mnist-test[:20]")
    assert _champion(client, "digits") == (2, 2)


def test_promotions_to_one_store_take_turns(local_store):
    """Under `dvc queue start -j 2` two plot stages must not both read the champion and both move the alias."""
    client, _ = store.connect("exp-u")
    run = _run_with_model("exp-u", 0.9)
    uri = mlflow.get_tracking_uri()
    outcome = []
    with registry.promotion_lock(uri):  # another promotion holds it
        waiting = threading.Thread(target=lambda: outcome.append(registry.promote_if_best("exp-u", *run, "digits")))
        waiting.start()
        waiting.join(timeout=1.5)
        assert waiting.is_alive() and not outcome  # it waits its turn, reading nothing yet
        with pytest.raises(store.TrackingError, match=r"^MLflow registry sqlite:///\S+: another promotion on this "
                           r"machine held \S+\.lock for 0\.2 s; nothing registered; run `dvc repro` again$"):
            with registry.promotion_lock(uri, timeout=0.2):
                pass
    waiting.join(timeout=60)
    assert outcome[0].promoted and _champion(client, "digits") == (1, 1)


def test_a_registry_failure_half_way_is_one_line_and_the_next_try_finishes_it(local_store, monkeypatch):
    client, _ = store.connect("exp-v")
    run = _run_with_model("exp-v", 0.9)

    def fail(self, name, alias, version):
        raise MlflowException("bad gateway", INTERNAL_ERROR)

    with monkeypatch.context() as patch:  # the store answers registering, then fails
        patch.setattr(MlflowClient, "set_registered_model_alias", fail)
        with pytest.raises(store.TrackingError) as caught:
            registry.promote_if_best("exp-v", *run, "digits")
    assert re.fullmatch(r"MLflow registry sqlite:///\S+: bad gateway; version 1 registered, but the alias champion "
                        r"not moved to it; run `dvc repro` again to finish", str(caught.value))
    assert len(client.search_model_versions("name = 'digits'")) == 1
    assert CHAMPION_ALIAS not in client.get_registered_model("digits").aliases
    # `dvc repro` again: this run's version is found, not registered twice, and the alias moves to it.
    assert _promote("exp-v", run) == "best so far: registered as digits version 1 (alias champion)"
    assert _champion(client, "digits") == (1, 1)


STORE_FAILURES = [
    MlflowException("database is locked", TEMPORARILY_UNAVAILABLE),
    MlflowException("bad gateway", INTERNAL_ERROR),
    MlflowException("Registered model alias champion not found.", INVALID_PARAMETER_VALUE),  # a malformed request's code
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
            with pytest.raises(store.TrackingError, match=r"^MLflow registry sqlite:///.*: cannot read model "
                               r"'digits''s champion \(.+\); nothing registered, the alias left as it was; "
                               r"run `dvc repro` again$") as caught:
                registry.promote_if_best("exp-i", *better, "digits")
        assert "\n" not in str(caught.value)
        assert _champion(client, "digits") == (1, 1), failure
    # The store answers again: the better run takes over.
    assert _promote("exp-i", better) == "best so far: registered as digits version 2 (alias champion)"
