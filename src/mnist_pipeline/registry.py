"""The registry's champion: which run's model the alias `champion` points at, and when it moves."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from mnist_pipeline.store import (STORE_ERRORS, MlflowClient, TrackingError, connect, mlflow,  # noqa: I001
                                  reason, shown)
from mnist_pipeline.config import CHAMPION_ALIAS

REGISTERED_VERSION_TAG = "evaluate.registered_version"  # <name>/<version> when its evaluation registered it
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

    name = hashlib.sha256(shown(uri).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"mnist-pipeline-promotion-{name}.lock"
    with open(path, "a", encoding="utf-8") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TrackingError(f"MLflow registry {shown(uri)}: another promotion on this machine held "
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
    except STORE_ERRORS as exc:
        raise TrackingError(f"MLflow store {shown(uri)}: cannot read run {run_id} ({reason(exc)}); "
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
    except STORE_ERRORS as exc:
        raise TrackingError(
            f"MLflow registry {shown(mlflow.get_tracking_uri())}: cannot read model {model_name!r}'s {CHAMPION_ALIAS} "
            f"({reason(exc)}); nothing registered, the alias left as it was; run `dvc repro` again"
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
    except STORE_ERRORS as exc:
        done = (f"version {version} registered, but the alias {CHAMPION_ALIAS} not moved to it"
                if version else "nothing registered, the alias left as it was")
        raise TrackingError(f"MLflow registry {shown(uri)}: {reason(exc)}; {done}; "
                            "run `dvc repro` again to finish") from None
    return version
