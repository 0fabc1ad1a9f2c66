"""The search's pieces that need no training: trial values, the storage, the sampler, what it reports, and how it
fails: before it creates anything when a tool is missing, in one line when a trial fails, never showing a password."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from mnist_pipeline.config import parse_config
from mnist_pipeline.search.space import parse_space
from mnist_pipeline.search.trials import (
    DEFAULT_VALIDATION_IMAGES,
    SearchError,
    SearchOptions,
    _yaml_value,
    assignments,
    best_lines,
    existing_names,
    experiment_ref,
    open_storage,
    push_experiment,
    run_search,
    sampler,
    trial_name,
)
from mnist_pipeline.tracking import store

from conftest import require
from servers import postgres_bin, postgres_cluster


def test_each_trial_holds_out_validation_images_unless_the_user_chose_how_many():
    assert assignments({"epochs": 1}, {"lr": 0.1}) == {
        "data.validation_images": DEFAULT_VALIDATION_IMAGES,
        "epochs": 1,
        "lr": 0.1,
    }
    assert assignments({"data.validation_images": 1000}, {})["data.validation_images"] == 1000
    with pytest.raises(
        SearchError,
        match=r"^data.validation_images: a search scores trials on held-out training "
        r"images, never on the test set",
    ):
        assignments({"data.validation_images": 0}, {})


def test_values_reach_dvc_as_yaml():
    assert [_yaml_value(v) for v in (None, True, False, 3, 0.1, "compact")] == [
        "null",
        "true",
        "false",
        "3",
        "0.1",
        "compact",
    ]
    assert trial_name("study", 7) == "study-7"


def test_a_grid_space_is_searched_exhaustively_and_any_other_with_tpe():
    assert isinstance(sampler(parse_space({"lr": {"grid": [0.1, 0.2]}}), seed=1), optuna.samplers.GridSampler)
    assert isinstance(sampler(parse_space({"lr": {"low": 0.01, "high": 0.1}}), seed=1), optuna.samplers.TPESampler)


def test_the_storage_opens_or_says_in_one_line_why_not(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat=5)
    assert storage.get_heartbeat_interval() == 5
    with pytest.raises(SearchError) as caught:
        open_storage(f"sqlite:///{tmp_path / 'missing' / 'folder' / 'study.db'}", heartbeat=5)
    assert str(caught.value).startswith(f"study storage sqlite:///{tmp_path}/missing/folder/study.db: cannot be used (")
    assert str(caught.value).endswith("; start the database, or fix --storage") and "\n" not in str(caught.value)


def test_the_report_names_the_best_trial_by_validation_and_how_to_bring_it_back(tmp_path):
    study = optuna.create_study(direction="maximize", study_name="s")
    for number, value in enumerate((0.9, 0.95)):
        trial = study.ask()
        trial.suggest_float("lr", 0.01, 0.2)
        trial.set_user_attr("experiment", f"s-{number}")
        trial.set_user_attr("test_accuracy", value - 0.01)
        study.tell(trial, value)
    lines = best_lines(study, push="origin")
    assert lines[0] == "search: study s: 2 trials finished; the best by validation accuracy is s-1"
    assert lines[2] == "search: s-1: validation accuracy 0.9500, test accuracy 0.9400 (reported, never tuned on)"
    assert lines[3] == "search: bring it into the workspace: dvc exp pull origin s-1 && dvc exp apply s-1"


def test_experiments_are_found_by_name_among_dvc_s_refs(tmp_path):
    repository = _repository(tmp_path / "repository")
    for name in ("s-0", "s-12", "other-1", "s-x"):
        subprocess.run(["git", "-C", str(repository), "update-ref", f"refs/exps/ab/cdef/{name}", "HEAD"], check=True)
    assert experiment_ref(repository, "s-12") == "refs/exps/ab/cdef/s-12" and experiment_ref(repository, "s-3") is None
    assert existing_names(repository, "s") == ["s-0", "s-12"]


def _repository(folder: Path) -> Path:
    """A git repository with one commit, as a clone of the project is to `dvc exp run`."""
    folder.mkdir()
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    subprocess.run(
        [
            "git",
            "-C",
            str(folder),
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "base",
        ],
        check=True,
    )
    return folder


VENV_PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # the venv's dvc, as activated


@pytest.fixture
def venv_on_path(monkeypatch):
    """PATH as a user's shell has it with the venv activated (the test command itself does not activate it)."""
    monkeypatch.setenv("PATH", VENV_PATH)


def _path_with(folder: Path, *tools: str, **scripts: str) -> str:
    """A PATH of one folder holding the named tools (links to the real ones) and scripts (name: shell text)."""
    folder.mkdir()
    for tool in tools:
        (folder / tool).symlink_to(shutil.which(tool, path=VENV_PATH))
    for name, text in scripts.items():
        (folder / name).write_text(f"#!/bin/sh\n{text}\n")
        (folder / name).chmod(0o755)
    return str(folder)


def _search(study: str, storage: str, **options) -> SearchOptions:
    return SearchOptions(
        study=study, trials=1, space=parse_space({"lr": {"low": 0.01, "high": 0.1}}), storage=storage, **options
    )


@pytest.mark.parametrize(
    "tools, message",
    [
        (["git"], "dvc: not found on PATH; activate the project's venv (source .venv/bin/activate) or put dvc on PATH"),
        (["dvc"], "git: not found on PATH; install git (trials are DVC experiments, kept in git)"),
    ],
    ids=["no-dvc", "no-git"],
)
def test_without_dvc_or_git_the_search_stops_before_it_creates_anything(local_store, monkeypatch, tools, message):
    """No study, no Optuna trial, no MLflow store or run: `.venv/bin/python search.py` without the venv on PATH."""
    root = _repository(local_store / "clone")
    monkeypatch.setenv("PATH", _path_with(local_store / "bin", *tools))
    storage = local_store / "study.db"
    with pytest.raises(SearchError) as caught:
        run_search(_search("s", f"sqlite:///{storage}"), root, parse_config({}))
    assert str(caught.value) == message
    assert not storage.exists() and not (local_store / "mlflow.db").exists()


def test_outside_a_git_repository_the_search_stops_before_it_creates_anything(local_store, venv_on_path):
    (local_store / "folder").mkdir()
    storage = local_store / "study.db"
    with pytest.raises(SearchError) as caught:
        run_search(_search("s", f"sqlite:///{storage}"), local_store / "folder", parse_config({}))
    assert str(caught.value).startswith(f"{local_store / 'folder'}: not a git repository with a commit (")
    assert str(caught.value).endswith("); run search.py in a clone of the project") and "\n" not in str(caught.value)
    assert not storage.exists() and not (local_store / "mlflow.db").exists()


def test_a_trial_whose_dvc_exp_run_fails_is_one_line_and_leaves_no_run_running(local_store, monkeypatch, capfd):
    root = _repository(local_store / "clone")
    failing = "echo 'Running stage train' >&2; echo \"ERROR: failed to reproduce 'train': boom\" >&2; exit 255"
    monkeypatch.setenv("PATH", _path_with(local_store / "bin", "git", dvc=failing))
    storage = f"sqlite:///{local_store / 'study.db'}"
    with pytest.raises(SearchError) as caught:
        run_search(_search("s", storage), root, parse_config({}))
    assert str(caught.value) == "trial s-0: dvc exp run exited 255 (ERROR: failed to reproduce 'train': boom)"
    printed = capfd.readouterr().err
    assert "Trial 0 failed" not in printed and "Traceback" not in printed  # Optuna's report, with its traceback
    client, experiment_id = store.connect("mnist-cnn")
    assert [(r.info.run_name, r.info.status) for r in client.search_runs([experiment_id])] == [("s (search)", "FAILED")]
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL]


def test_a_storage_that_fails_during_the_study_is_one_line_and_leaves_no_run_running(local_store, monkeypatch):
    root = _repository(local_store / "clone")
    storage = local_store / "study.db"
    # A trial during which the study's database is lost (here overwritten): Optuna cannot record how it ended.
    monkeypatch.setenv("PATH", _path_with(local_store / "bin", "git", dvc=f"echo garbage > {storage}; exit 1"))
    with pytest.raises(SearchError) as caught:
        run_search(_search("s", f"sqlite:///{storage}"), root, parse_config({}))
    assert str(caught.value) == (
        f"study storage sqlite:///{storage}: cannot be used ((sqlite3.DatabaseError) file is "
        "not a database); start the database, or fix --storage"
    )
    client, experiment_id = store.connect("mnist-cnn")
    assert [(r.info.run_name, r.info.status) for r in client.search_runs([experiment_id])] == [("s (search)", "FAILED")]


def test_a_remote_that_looks_like_an_option_is_never_read_as_one(tmp_path, venv_on_path):
    """`--push --help` must not print DVC's help and pass for a push."""
    root = _repository(tmp_path / "clone")
    subprocess.run(["dvc", "init", "-q"], cwd=root, check=True)
    with pytest.raises(SearchError) as caught:
        push_experiment(root, "--help", "s-0")
    assert str(caught.value).startswith("trial s-0: dvc exp push --help failed (") and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://alice:s3cretPW@127.0.0.1:9/none",
        "postgresql+psycopg://alice:s3cretPW@127.0.0.1:9/none",
        "postgresql//alice:s3cretPW@127.0.0.1:9/none",
    ],
)
def test_a_password_in_the_storage_url_is_never_shown(url):
    with pytest.raises(SearchError) as caught:
        open_storage(url, heartbeat=5)
    assert "s3cretPW" not in str(caught.value) and "alice:***@127.0.0.1:9/none: cannot be used (" in str(caught.value)


@pytest.mark.e2e
def test_the_storage_password_can_come_from_the_environment(tmp_path, monkeypatch):
    """The README's team setup keeps the password off the command line: libpq reads PGPASSWORD (or ~/.pgpass)."""
    bin_dir = postgres_bin()
    require(
        bin_dir,
        "a PostgreSQL server (/usr/lib/postgresql/*/bin/initdb)",
        "apt-get install postgresql (as .ci/run does)",
    )
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))  # none of the user's own passwords
    monkeypatch.delenv("PGPASSWORD", raising=False)
    with postgres_cluster(bin_dir, ("optuna",), password="s3cretPW") as databases:
        url = databases["optuna"]
        assert "s3cretPW" not in url
        with pytest.raises(SearchError, match="password"):  # the server asks for one
            open_storage(url, heartbeat=5)
        monkeypatch.setenv("PGPASSWORD", "s3cretPW")
        assert open_storage(url, heartbeat=5).get_heartbeat_interval() == 5
        monkeypatch.setenv("PGPASSWORD", "wrongPW")
        with pytest.raises(SearchError) as caught:
            open_storage(url, heartbeat=5)
        assert "password authentication failed" in str(caught.value) and "PW" not in str(caught.value)
