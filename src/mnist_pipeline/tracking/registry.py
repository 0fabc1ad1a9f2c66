"""The registry's champion: which run's model the alias `champion` points at, and when it moves."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

# first: it sets MLflow's environment before MLflow loads
from mnist_pipeline.tracking.store import (
    STORE_ERRORS,
    MlflowClient,
    TrackingError,
    connect,
    mlflow,
    reason,
    shown,
)

# isort: split
from mnist_pipeline.config import CHAMPION_ALIAS

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

REGISTERED_VERSION_TAG = "evaluate.registered_version"  # <name>/<version> when its evaluation registered it
FULL_TEST_SET = "mnist-test"  # the test split's dataset name when no data.max_test_images slices it
# Rounds of "move the alias, read the versions again" one promotion makes while other promotions keep
# registering versions; each round is one new version seen, so only a registry under a flood runs out.
SETTLE_ROUNDS = 20


@dataclass(frozen=True)
class Promotion:
    """What promote_if_best did: whether the run's model became the champion, and one line that says so or why not."""

    promoted: bool
    message: str


@dataclass(frozen=True)
class Version:
    """A registered version of the model, and what its run scored on which test set."""

    number: str
    run_id: str | None
    test_set: tuple[str, str] | None  # (name, digest), as test_set_of reads it; None: unknown
    score: float  # the run's metric; -inf without one


def test_set_of(run) -> tuple[str, str] | None:
    """(name, digest) of the test data a run was scored on: its dataset input in the `test` context; None without one."""
    for dataset_input in run.inputs.dataset_inputs:
        if any(t.key == "mlflow.data.context" and t.value == "test" for t in dataset_input.tags):
            return dataset_input.dataset.name, dataset_input.dataset.digest
    return None


def best_version(versions: dict[str, Version], test_set: tuple[str, str]) -> Version | None:
    """The best-scored version on `test_set`; of equal scores, the first registered. None when none was scored on it."""
    rivals = [v for v in versions.values() if v.test_set == test_set]
    return max(rivals, key=lambda v: (v.score, -int(v.number)), default=None)


def promote_if_best(
    experiment: str, run_id: str, model_uri: str, model_name: str, metric: str = "eval_accuracy"
) -> Promotion:
    """Register the run's model (`model_uri`, models:/m-...) and point the `champion` alias at it when the run
    beats every version of the model scored on the same, whole test set.

    Only runs scored on the whole test set compete: a quick trial scored on twenty images could otherwise
    reach 100% and take the alias from a better model. A champion scored on another test set (a slice,
    before this rule) cannot defend the title. An alias moved by hand stays until a run beats every
    version. Promotions from any number of machines at once end with the best version as champion,
    through the registry alone (settle). If the registry fails half-way (a version registered, the alias
    not settled), the next `dvc repro` finds this run's version and settles the alias, registering nothing twice.
    """
    client, _ = connect(experiment)
    uri = mlflow.get_tracking_uri()
    try:
        run = client.get_run(run_id)
    except STORE_ERRORS as exc:
        raise TrackingError(
            f"MLflow store {shown(uri)}: cannot read run {run_id} ({reason(exc)}); "
            "nothing registered; run `dvc repro` again"
        ) from None
    score, scored_on = run.data.metrics.get(metric), test_set_of(run)
    if score is None:
        return Promotion(False, f"not compared with the {CHAMPION_ALIAS}: the run has no {metric}")
    if scored_on is None or scored_on[0] != FULL_TEST_SET:
        where = scored_on[0] if scored_on else "an unknown test set"
        return Promotion(
            False,
            f"not compared with the {CHAMPION_ALIAS}: scored on {where}; only runs scored on "
            f"the whole test set ({FULL_TEST_SET}, data.max_test_images: null) compete",
        )
    known: dict[str, Version] = {}  # a version's run and score never change: each run is read once

    def read() -> dict[str, Version]:
        return read_versions(client, model_name, metric, known)

    try:
        # The champion first: a run that does not beat it (most runs) reads nothing more.
        champion = champion_version(client, model_name, metric, known)
        # The champion, when it was scored on the same test set as this run: then this run must beat it.
        defender = champion if champion is not None and champion.test_set == scored_on else None
        # This run's own version, given the alias by a promotion that failed before it settled (no tag yet):
        # the settling is finished below, against every version.
        unsettled = (
            champion is not None
            and champion.run_id == run_id
            and run.data.tags.get(REGISTERED_VERSION_TAG) != f"{model_name}/{champion.number}"
        )
        if defender is not None and score <= defender.score and not unsettled:
            return Promotion(
                False,
                f"the {CHAMPION_ALIAS} stays: version {defender.number}, {metric} "
                f"{defender.score:.4f} against this run's {score:.4f}",
            )
        versions = read()
    except STORE_ERRORS as exc:
        raise TrackingError(
            f"MLflow registry {shown(uri)}: cannot read model {model_name!r}'s {CHAMPION_ALIAS} "
            f"({reason(exc)}); nothing registered, the alias left as it was; run `dvc repro` again"
        ) from None
    mine = [v.number for v in versions.values() if v.run_id == run_id]  # from an earlier try that failed half-way
    best = best_version(versions, scored_on)
    # The alias moved by hand below the best version: this run must beat the best.
    if not mine and defender is not None and best is not None and score <= best.score:
        return Promotion(
            False,
            f"the {CHAMPION_ALIAS} stays: version {defender.number}; this run's {metric} "
            f"{score:.4f} does not beat version {best.number}'s {best.score:.4f}",
        )
    version, winner = _register_and_settle(client, uri, run_id, model_uri, model_name, scored_on, mine, read)
    replaced = ""
    if champion is not None and defender is None:
        was = champion.test_set[0] if champion.test_set else "an unknown test set"
        replaced = f"; version {champion.number} was scored on {was}"
    if winner.number != version:
        return Promotion(
            False,
            f"registered as {model_name} version {version}, but version {winner.number} beats it "
            f"({metric} {winner.score:.4f} against this run's {score:.4f}): the {CHAMPION_ALIAS} "
            f"is version {winner.number}{replaced}",
        )
    return Promotion(
        True, f"best so far: registered as {model_name} version {version} (alias {CHAMPION_ALIAS}){replaced}"
    )


def champion_version(client: MlflowClient, model_name: str, metric: str, known: dict[str, Version]) -> Version | None:
    """The version the alias points at, with its score; None when the model or the alias does not exist yet."""
    # Only "no such model" means there is no champion yet. Any other failure (a locked database, a server
    # hiccup) is raised: taking it for "none" would put a worse run over the real champion. The alias is
    # read off the registered model, not by get_model_version_by_alias, whose "no such alias"
    # (INVALID_PARAMETER_VALUE) is also its answer to a malformed request.
    try:
        aliases = client.get_registered_model(model_name).aliases
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None
    if CHAMPION_ALIAS not in aliases:
        return None
    number = str(aliases[CHAMPION_ALIAS])
    if number not in known:
        known[number] = _scored(client, number, client.get_model_version(model_name, number).run_id, metric)
    return known[number]


def read_versions(client: MlflowClient, model_name: str, metric: str, known: dict[str, Version]) -> dict[str, Version]:
    """Every registered version of the model, by number, with its run's score; `known` holds (and gets) those read before."""
    found: list[ModelVersion] = []
    page = None
    while True:
        batch = client.search_model_versions(f"name = '{model_name}'", page_token=page)
        found += batch
        page = batch.token
        if not page:
            break
    versions = {}
    for model_version in found:
        number = str(model_version.version)
        if number not in known:
            known[number] = _scored(client, number, model_version.run_id, metric)
        versions[number] = known[number]
    return versions


def _scored(client: MlflowClient, number: str, run_id: str | None, metric: str) -> Version:
    if not run_id:  # registered from files, not from a run: nothing to compare
        return Version(number, None, None, float("-inf"))
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return Version(number, run_id, None, float("-inf"))  # its run is gone: it cannot defend a score
    return Version(number, run_id, test_set_of(run), run.data.metrics.get(metric, float("-inf")))


def _register_and_settle(
    client: MlflowClient,
    uri: str,
    run_id: str,
    model_uri: str,
    model_name: str,
    scored_on: tuple[str, str],
    mine: list[str],
    read: Callable[[], dict[str, Version]],
) -> tuple[str, Version]:
    """This run's version (registered now, or found from an earlier try), and the version the alias settled on.

    Settling takes no lock, only the registry, so it holds across machines: point the alias at the best
    version, read the versions again, and repeat until no version appeared or went between the read before the
    move and the read after it. The last promoter to move the alias then read, after its move, every version
    whose promoter had moved the alias before it, and each promoter registers before it moves the alias: so
    the last move, whoever makes it, points at the best of them all.
    """
    version, moved = (max(mine, key=int) if mine else None), False
    try:
        if version is None:
            # By the logged model's own URI: a runs:/ URI makes MLflow 3 look for run artifacts first and warn.
            version = str(mlflow.register_model(model_uri, model_name).version)
        versions = read()
        for _ in range(SETTLE_ROUNDS):
            winner = best_version(versions, scored_on)
            if winner is None:
                raise TrackingError(
                    f"MLflow registry {shown(uri)}: version {version} of {model_name!r} was deleted "
                    "while it was promoted; the alias not moved; run `dvc repro` again"
                )
            client.set_registered_model_alias(model_name, CHAMPION_ALIAS, winner.number)
            moved = True
            after = read()
            if after.keys() == versions.keys():
                break
            versions = after
        else:
            raise TrackingError(
                f"MLflow registry {shown(uri)}: versions of {model_name!r} kept appearing for "
                f"{SETTLE_ROUNDS} rounds; version {version} registered, the alias not settled; "
                "run `dvc repro` again to finish"
            )
        client.set_tag(run_id, REGISTERED_VERSION_TAG, f"{model_name}/{version}")
        mlflow.flush_async_logging()  # the tag, under MLFLOW_ENABLE_ASYNC_LOGGING (see log_results)
    except STORE_ERRORS as exc:
        if version is None:
            done = "nothing registered, the alias left as it was"
        elif moved:
            done = (
                f"version {version} registered, but the alias {CHAMPION_ALIAS} not checked against the versions since"
            )
        else:
            done = f"version {version} registered, but the alias {CHAMPION_ALIAS} not moved to it"
        raise TrackingError(
            f"MLflow registry {shown(uri)}: {reason(exc)}; {done}; run `dvc repro` again to finish"
        ) from None
    return version, winner
