"""A hyperparameter search whose every trial is a DVC experiment and an MLflow run, on one or many machines.

Optuna proposes each trial's params (TPE by default, or every point of a grid) and keeps the study in
its relational storage: the same `python search.py` started in several clones, on several machines,
with `--storage` naming one database, works on one study, and nothing else coordinates them. A
trial is `dvc exp run --temp -n <study>-<trial>` with its params and the fixed `-S` values: its
outputs are a DVC experiment (`dvc exp show`, `dvc exp apply`), its training one MLflow run tagged
with the study and the trial, a child of the study's summary run. The objective is the accuracy on
held-out training images (`data.validation_images`, 5000 unless set): the test set only reports.

A worker that dies stops its heartbeat; the next worker to start a trial marks the dead one's trial
failed, its MLflow run KILLED, and runs it again (RetryFailedTrialCallback). A worker that fails (a trial's
`dvc exp run`, git, `dvc exp push`, the storage) stops with one line and marks the summary run FAILED.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnist_pipeline.errors import PipelineError, without_password
from mnist_pipeline.search.space import SearchSpace

DEFAULT_VALIDATION_IMAGES = 5000
DEFAULT_STORAGE = "sqlite:///search.db"  # beside params.yaml; a team gives --storage postgresql://...
HEARTBEAT_SECONDS = 30  # a worker silent for twice this is taken for dead
MAX_RETRIES = 2  # a trial whose worker died runs again at most this often
STORAGE_ATTEMPTS = 4


class SearchError(PipelineError):
    """The search cannot start or a trial failed."""


@dataclass(frozen=True)
class SearchOptions:
    """One worker's part of a study, as `python search.py` was asked."""

    study: str
    trials: int
    space: SearchSpace
    storage: str = DEFAULT_STORAGE
    fixed: dict[str, Any] = field(default_factory=dict)  # the -S values every trial gets
    push: str | None = None  # a git remote: each finished trial is sent there with `dvc exp push`
    seed: int | None = None
    heartbeat: int = HEARTBEAT_SECONDS


@dataclass(frozen=True)
class TrialResult:
    """What a finished trial's DVC experiment recorded."""

    val_accuracy: float
    test_accuracy: float
    run_id: str | None


def trial_name(study: str, number: int) -> str:
    """The trial's DVC experiment name (and its MLflow run's)."""
    return f"{study}-{number}"


def assignments(fixed: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A trial's -S values: the fixed ones, the trial's, and validation images held out unless the user set them."""
    merged = {"data.validation_images": DEFAULT_VALIDATION_IMAGES, **fixed, **values}
    if not merged["data.validation_images"]:
        raise SearchError(
            "data.validation_images: a search scores trials on held-out training images, never on "
            "the test set; give a number above 0 (or leave it: 5000)"
        )
    return merged


def _yaml_value(value: Any) -> str:
    """A value as `dvc exp run -S` reads it (YAML): null, true/false, numbers and strings as they are."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def storage_error(url: str, exc: BaseException) -> SearchError:
    """One line on a storage failure, with its first line and no password."""
    text = str(exc).strip()
    first = (text.splitlines() or [type(exc).__name__])[0]
    return SearchError(
        without_password(
            url, f"study storage {url}: cannot be used ({first[:200]}); start the database, or fix --storage"
        )
    )


def open_storage(url: str, heartbeat: int, on_stale=None):
    """Optuna's storage at `url`, with heartbeats; one line (SearchError) when it cannot be used, before any training."""
    import time

    import optuna
    import sqlalchemy.exc

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=heartbeat,
                    grace_period=2 * heartbeat,
                    heartbeat_stale_trial_callback=on_stale,
                )
        except (sqlalchemy.exc.SQLAlchemyError, OSError, ValueError, ImportError) as exc:
            text = str(exc).strip()
            # Workers that start together on a new database both create Optuna's tables: one loses; ask again.
            if attempt + 1 < STORAGE_ATTEMPTS and any(s in text for s in ("already exists", "duplicate key")):
                time.sleep(1 + attempt)
                continue
            raise storage_error(url, exc) from None
    raise AssertionError("unreachable")


def _run(command: list[str], root: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`command` in `root`, its output captured; SearchError (one line) when it cannot start at all."""
    try:
        return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    except OSError as exc:
        raise SearchError(
            f"{command[0]}: cannot run ({exc.strerror or exc}); check that it is installed and on PATH, "
            "then run search.py again"
        ) from None


def _last_line(done: subprocess.CompletedProcess) -> str:
    """What a failed command said last (DVC ends with its ERROR line), or its exit status."""
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {done.returncode}"


def check_tools(root: Path) -> None:
    """dvc and git on PATH, and `root` a git repository with a commit: what every trial needs, checked before
    the search creates anything (a study, a trial, an MLflow run)."""
    if shutil.which("dvc") is None:  # `.venv/bin/python search.py` without the venv on PATH
        raise SearchError(
            "dvc: not found on PATH; activate the project's venv (source .venv/bin/activate) or put dvc on PATH"
        )
    if shutil.which("git") is None:
        raise SearchError("git: not found on PATH; install git (trials are DVC experiments, kept in git)")
    done = _run(["git", "rev-parse", "--verify", "--quiet", "HEAD^{commit}"], root)
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no commit yet"])[0]
        raise SearchError(
            f"{root}: not a git repository with a commit ({detail}); run search.py in a clone of the project"
        )


def run_experiment(root: Path, name: str, params: dict[str, Any], env: dict[str, str]) -> None:
    """`dvc exp run --temp -n name -S ...` in `root`; SearchError with its last line when it fails."""
    command = ["dvc", "exp", "run", "--temp", "-n", name]
    for key, value in params.items():
        command += ["-S", f"{key}={_yaml_value(value)}"]
    done = _run(command, root, env)
    if done.returncode != 0:
        raise SearchError(f"trial {name}: dvc exp run exited {done.returncode} ({_last_line(done)})")


def _git(root: Path, *args: str) -> str:
    done = _run(["git", *args], root)
    if done.returncode != 0:
        raise SearchError(f"git {' '.join(args)}: {(done.stderr.strip().splitlines() or [done.returncode])[0]}")
    return done.stdout


def experiment_ref(root: Path, name: str) -> str | None:
    """The git ref DVC keeps experiment `name` under (refs/exps/...), or None."""
    refs = _git(root, "for-each-ref", "--format=%(refname)", "refs/exps").split()
    found = [ref for ref in refs if ref.rsplit("/", 1)[-1] == name]
    return found[0] if found else None


def experiment_result(root: Path, name: str, eval_metrics: str, mlflow_run: str) -> TrialResult:
    """The validation and test accuracy, and the MLflow run, that experiment `name` recorded."""
    import json

    ref = experiment_ref(root, name)
    if ref is None:
        raise SearchError(f"trial {name}: dvc exp run left no experiment of that name")
    evaluation = json.loads(_git(root, "show", f"{ref}:{eval_metrics}"))
    run = json.loads(_git(root, "show", f"{ref}:{mlflow_run}"))
    if evaluation.get("val_accuracy") is None:
        raise SearchError(f"trial {name}: {eval_metrics} has no val_accuracy (no validation images held out)")
    return TrialResult(float(evaluation["val_accuracy"]), float(evaluation["test_accuracy"]), run.get("run_id"))


def push_experiment(root: Path, remote: str, name: str) -> None:
    """`dvc exp push <remote> <name>`: the experiment's commit to the git remote, its outputs to the DVC remote."""
    # After `--`, a remote that starts with `-` (`--push --help`) is a name, never one of DVC's options.
    done = _run(["dvc", "exp", "push", "--", remote, name], root)
    if done.returncode != 0:
        raise SearchError(f"trial {name}: dvc exp push {remote} failed ({_last_line(done)})")


def existing_names(root: Path, study: str) -> list[str]:
    """Experiments in this clone already named like the study's trials (`<study>-<number>`)."""
    refs = _git(root, "for-each-ref", "--format=%(refname)", "refs/exps").split()
    names = [ref.rsplit("/", 1)[-1] for ref in refs]
    return sorted(n for n in names if n.startswith(f"{study}-") and n.removeprefix(f"{study}-").isdigit())


def sampler(space: SearchSpace, seed: int | None):
    """Every point of the grid when the space is one; else TPE, lying constantly about trials still running so
    that parallel workers do not all try the same region."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if space.is_grid:
            return optuna.samplers.GridSampler(space.grid(), seed=seed)
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def best_lines(study, push: str | None) -> list[str]:
    """What the search found: the best trial by validation accuracy, its test accuracy, and how to bring it back."""
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return [f"search: study {study.study_name}: no trial has finished yet"]
    best = study.best_trial
    name = best.user_attrs.get("experiment", trial_name(study.study_name, best.number))
    params = ", ".join(f"{k}={_yaml_value(v)}" for k, v in best.params.items())
    apply = f"dvc exp pull {push} {name} && dvc exp apply {name}" if push else f"dvc exp apply {name}"
    return [
        f"search: study {study.study_name}: {len(complete)} trials finished; the best by validation accuracy is {name}",
        f"search: {name}: {params}",
        f"search: {name}: validation accuracy {best.value:.4f}, test accuracy "
        f"{best.user_attrs.get('test_accuracy', float('nan')):.4f} (reported, never tuned on)",
        f"search: bring it into the workspace: {apply}",
    ]


def run_search(options: SearchOptions, root: Path, config) -> list[str]:
    """Run this worker's trials of the study; return the lines that report what the study found so far.

    Everything that can be checked is, before the first training: the space and the -S values
    (parsed already), dvc and git (before anything is created), the storage, the MLflow store, and
    that this clone holds no experiments of an earlier study of the same name.
    """
    import optuna
    import sqlalchemy.exc

    from mnist_pipeline.search import summary
    from mnist_pipeline.tracking import store
    from mnist_pipeline.tracking.runs import PARENT_ENV, STUDY_ENV, TRIAL_ENV

    def storage_failure(exc: BaseException | None) -> BaseException | None:
        """The storage's error behind `exc`, if one is: SQLAlchemy's, whose message says what failed, rather than
        Optuna's StorageInternalError around it (a generic message). When the storage fails while Optuna records a
        trial's end, its optimize loop (5.0.0) raises an UnboundLocalError on top: the chain is searched."""
        found: BaseException | None = None
        while exc is not None:
            if isinstance(exc, sqlalchemy.exc.SQLAlchemyError):
                return exc
            if isinstance(exc, optuna.exceptions.StorageInternalError) and found is None:
                found = exc
            exc = exc.__cause__ or exc.__context__
        return found

    assignments(options.fixed, {})  # a search without validation images is refused now, not at the first trial
    check_tools(root)

    def on_stale(study, trial) -> None:
        # A worker died mid-trial: its run cannot end itself. Then the trial runs again, here or elsewhere.
        summary.kill_trial_runs(client, experiment_id, study.study_name, trial.number)
        optuna.storages.RetryFailedTrialCallback(max_retry=MAX_RETRIES)(study, trial)

    # The storage before the MLflow store: a mistyped --storage leaves no MLflow store behind.
    storage = open_storage(options.storage, options.heartbeat, on_stale)
    client, experiment_id = store.connect(config.tracking.experiment)
    try:
        study = optuna.create_study(
            study_name=options.study,
            storage=storage,
            direction="maximize",
            sampler=sampler(options.space, options.seed),
            load_if_exists=True,
        )
        any_finished = any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        raise storage_error(options.storage, storage_failure(exc) or exc) from None
    if not any_finished:
        leftovers = existing_names(root, options.study)
        if leftovers:
            raise SearchError(
                f"study {options.study}: this clone already has experiments named like its trials "
                f"({', '.join(leftovers[:3])}); choose another --study, or dvc exp remove them"
            )
    parent = summary.summary_run(client, experiment_id, options.study)

    def objective(trial) -> float:
        name = trial_name(options.study, trial.number)
        trial.set_user_attr("experiment", name)
        params = assignments(options.fixed, options.space.suggest(trial))
        env = {**os.environ, STUDY_ENV: options.study, TRIAL_ENV: str(trial.number), PARENT_ENV: parent}
        print(f"search: trial {name}: " + ", ".join(f"{k}={_yaml_value(v)}" for k, v in params.items()), flush=True)
        run_experiment(root, name, params, env)
        result = experiment_result(root, name, config.paths.eval_metrics, config.paths.mlflow_run)
        trial.set_user_attr("test_accuracy", result.test_accuracy)
        trial.set_user_attr("mlflow_run_id", result.run_id)
        if options.push:
            push_experiment(root, options.push, name)
        print(f"search: trial {name}: validation accuracy {result.val_accuracy:.4f}", flush=True)
        return result.val_accuracy

    # Optuna reports a failed trial with two warnings and its traceback, on the logger of its optimize loop (named
    # after that module: tests/search/test_trials.py sees the report again if it moves); the error that stops this worker
    # is our one line.
    logging.getLogger("optuna.study._optimize").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(objective, n_trials=options.trials)
    except BaseException as exc:
        # The summary run is this worker's too: it must not stay RUNNING. Another worker that finishes later
        # marks it FINISHED again with the study's summary.
        summary.end_summary(client, parent, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        failure = storage_failure(exc)
        if failure is not None:
            raise storage_error(options.storage, failure) from None
        raise
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial.user_attrs.get("experiment") if finished else None
    summary.log_summary(client, parent, study, best)
    return best_lines(study, options.push)
