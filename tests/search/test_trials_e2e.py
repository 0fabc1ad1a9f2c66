"""search.py end to end: every trial a DVC experiment and an MLflow run; workers in separate clones share one study.

Each test works on copies or clones of the session's project (conftest's prepared_project), runs the real
`python search.py`, `dvc exp run`, `dvc exp push/pull`, an MLflow store or server and Optuna's storage, on
a slice of MNIST (one epoch, 1000 training images, 1000 held out).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import require, requires_mnist_mirror
from dvc_project import copy_project, environment, make_project, mlflow_client, run
from servers import mlflow_server, postgres_bin, postgres_cluster

pytestmark = [pytest.mark.e2e, requires_mnist_mirror()]

QUICK = ["-S", "epochs=1", "-S", "data.max_train_images=1000", "-S", "data.validation_images=1000"]


def search(
    project: Path, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    return run(project, sys.executable, "search.py", *args, env=env, check=check)


def committed(project: Path) -> Path:
    """The project with its first repro's results committed: the baseline every trial starts from."""
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "first run")
    return project


def shown_experiments(project: Path, env: dict[str, str] | None = None) -> dict[str, dict]:
    """`dvc exp show --json`: each experiment's params and metrics files, by name."""
    found = {}
    for revision in json.loads(run(project, "dvc", "exp", "show", "--json", env=env).stdout):
        for experiment in revision.get("experiments") or []:
            for rev in experiment["revs"]:
                found[rev["name"]] = {
                    "params": rev["data"]["params"]["params.yaml"]["data"],
                    "eval": rev["data"]["metrics"]["metrics/eval.json"]["data"],
                }
    return found


def trial_runs(client, study: str):
    experiment = client.get_experiment_by_name("mnist-cnn")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`search.study` = '{study}'")
    trials = [r for r in runs if "search.trial" in r.data.tags]
    summaries = [r for r in runs if r.data.tags.get("search.summary") == "true"]
    return trials, summaries


def test_one_worker_runs_each_trial_as_an_experiment_and_a_run_and_picks_the_best_by_validation(
    prepared_project, tmp_path
):
    project = committed(copy_project(prepared_project, tmp_path / "one"))
    done = search(project, "--study", "one", "--trials", "2", "--seed", "1", *QUICK)  # two: a best to pick
    shown = shown_experiments(project)
    names = ["one-0", "one-1"]
    assert set(names) <= set(shown), sorted(shown)
    for name in names:
        evaluation = shown[name]["eval"]
        assert 0 < evaluation["val_accuracy"] <= 1 and evaluation["val_images"] == 1000
        assert 0 < evaluation["test_accuracy"] <= 1 and evaluation["test_images"] == 10000
        assert shown[name]["params"]["data"]["validation_images"] == 1000 and shown[name]["params"]["epochs"] == 1
    best = max(names, key=lambda n: shown[n]["eval"]["val_accuracy"])
    assert f"the best by validation accuracy is {best}" in done.stdout
    assert f"bring it into the workspace: dvc exp apply {best}" in done.stdout
    assert f"test accuracy {shown[best]['eval']['test_accuracy']:.4f} (reported, never tuned on)" in done.stdout

    client = mlflow_client(project)
    trials, (summary,) = trial_runs(client, "one")
    assert sorted(r.data.tags["search.trial"] for r in trials) == ["0", "1"]
    for trial in trials:
        assert trial.info.status == "FINISHED" and trial.info.run_name == f"one-{trial.data.tags['search.trial']}"
        assert trial.data.tags["mlflow.parentRunId"] == summary.info.run_id
        assert trial.data.metrics["val_accuracy"] == shown[trial.info.run_name]["eval"]["val_accuracy"]
    assert summary.data.tags["search.best_trial"] == best
    assert summary.data.metrics["best_val_accuracy"] == shown[best]["eval"]["val_accuracy"]
    pictures = {a.path for a in client.list_artifacts(summary.info.run_id, "search")}
    assert pictures == {"search/optimization_history.png", "search/param_importances.png"}

    run(project, "dvc", "exp", "apply", best)
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["lr"] == shown[best]["params"]["lr"] and params["data"]["validation_images"] == 1000
    assert json.loads((project / "metrics" / "eval.json").read_text()) == shown[best]["eval"]


@pytest.mark.parametrize(
    "space, args, message",
    [
        (
            "lr: {low: 0.01, high: 0.1}\nlrr: [1]\n",
            [],
            "error: search.yaml: lrr: not a param of params.yaml (dotted, as dvc exp run -S takes it: lr, "
            "data.max_train_images, ...)",
        ),
        ("lr: {low: 0.1, high: 0.01}\n", [], "error: search.yaml: lr: an empty range (low 0.1 is not below high 0.01)"),
        (
            "lr: {low: 0.01, high: 0.1}\n",
            ["--storage", "postgresql://nobody@127.0.0.1:9/none"],
            "error: study storage postgresql://nobody@127.0.0.1:9/none: cannot be used (",
        ),
        (
            "lr: {low: 0.01, high: 0.1}\n",
            ["-S", "data.validation_images=0"],
            "error: data.validation_images: a search scores trials on held-out training images, never on the test set",
        ),
    ],
    ids=["unknown-param", "empty-range", "unreachable-storage", "no-validation"],
)
def test_bad_input_is_one_line_before_any_training(prepared_project, tmp_path, space, args, message):
    project = committed(copy_project(prepared_project, tmp_path / "bad"))
    (project / "search.yaml").write_text(space)
    client = mlflow_client(project)
    experiment_id = client.get_experiment_by_name("mnist-cnn").experiment_id
    runs_before = len(client.search_runs([experiment_id]))
    done = search(project, "--study", "bad", "--trials", "2", *QUICK, *args, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr
    assert run(project, "dvc", "exp", "list", "--name-only").stdout.split() == []
    assert len(client.search_runs([experiment_id])) == runs_before


@pytest.mark.parametrize(
    "tools, args, lines",
    [
        (
            ["git"],
            [],
            [
                "error: dvc: not found on PATH; activate the project's venv (source .venv/bin/activate) or put dvc "
                "on PATH"
            ],
        ),
        (
            ["git", "dvc"],
            ["--storage", "postgresql://alice:s3cretPW@127.0.0.1:9/none"],
            [
                "warning: --storage holds a password, which ps and your shell's history keep; put it in ~/.pgpass or PGPASSWORD "
                "instead (docs/search.md)",
                "error: study storage postgresql://alice:***@127.0.0.1:9/none: cannot be used ((psycopg.OperationalError) "
                'connection failed: connection to server at "127.0.0.1", port 9 failed: Connection refused); start the '
                "database, or fix --storage",
            ],
        ),
    ],
    ids=["without-the-venv-on-path", "a-password-on-the-command-line"],
)
def test_a_careless_command_line_is_one_line_and_creates_nothing(tmp_path, tools, args, lines):
    """`.venv/bin/python search.py` without the venv on PATH (as the README runs pytest), and a password typed
    into --storage: one line each (the password masked), exit status 2, no study, no MLflow store or run."""
    project = make_project(tmp_path / "careless")
    tools_folder = tmp_path / "bin"
    tools_folder.mkdir()
    for tool in tools:
        (tools_folder / tool).symlink_to(shutil.which(tool, path=environment()["PATH"]))
    done = search(
        project,
        "--study",
        "careless",
        "--trials",
        "1",
        *QUICK,
        *args,
        env=environment(PATH=str(tools_folder)),
        check=False,
    )
    assert (done.returncode, done.stderr.splitlines()) == (2, lines), done.stderr
    assert "s3cretPW" not in done.stdout + done.stderr
    assert not (project / "search.db").exists() and not (project / "mlflow.db").exists()


def test_a_killed_worker_s_trial_runs_again_elsewhere_and_its_run_ends_killed(prepared_project, tmp_path):
    import optuna

    project = committed(copy_project(prepared_project, tmp_path / "killed"))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["--study", "k", "--trials", "1", "--heartbeat", "2", "--storage", storage, *QUICK, "-S", "epochs=3"]
    worker = subprocess.Popen(
        [sys.executable, "search.py", *args],
        cwd=project,
        env=environment(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = mlflow_client(project)
    deadline = time.monotonic() + 300
    while not [r for r in trial_runs(client, "k")[0] if r.info.status == "RUNNING"]:
        assert worker.poll() is None, "the worker ended before it could be killed"
        assert time.monotonic() < deadline, "no trial started training"
        time.sleep(0.5)
    os.killpg(worker.pid, signal.SIGKILL)  # the worker and its dvc exp run, as a lost machine loses them
    worker.wait()
    time.sleep(5)  # past the grace period (twice the 2 s heartbeat): the trial is stale

    other = search(project, *args)  # another worker: it fails the stale trial and runs it again
    assert "validation accuracy" in other.stdout
    study = optuna.load_study(study_name="k", storage=storage)
    states = {t.number: t.state for t in study.trials}
    assert states == {0: optuna.trial.TrialState.FAIL, 1: optuna.trial.TrialState.COMPLETE}
    assert study.trials[1].params == study.trials[0].params  # the same trial, run again
    assert study.trials[1].system_attrs["failed_trial"] == 0
    runs = {r.data.tags["search.trial"]: r.info.status for r in trial_runs(client, "k")[0]}
    assert runs == {"0": "KILLED", "1": "FINISHED"}


def test_two_workers_in_two_clones_share_one_study_and_a_third_clone_sees_every_trial(prepared_project, tmp_path):
    """Two "machines" (separate clones) share nothing but PostgreSQL (the study and the MLflow server's store),
    a bare git remote and a folder DVC remote; every trial runs exactly once, and a third clone pulls them all."""
    bin_dir = postgres_bin()
    require(
        bin_dir,
        "a PostgreSQL server (/usr/lib/postgresql/*/bin/initdb)",
        "apt-get install postgresql (as .ci/run does)",
    )
    with (
        postgres_cluster(bin_dir, ("mlflow", "optuna")) as databases,
        mlflow_server(databases["mlflow"], tmp_path, environment()) as tracking_uri,
    ):
        origin, remote, seed = tmp_path / "origin.git", tmp_path / "dvc-remote", tmp_path / "seed"
        run(tmp_path, "git", "init", "-q", "--bare", "--initial-branch=main", str(origin))
        copy_project(prepared_project, seed)
        run(seed, "dvc", "remote", "add", "-d", "shared", str(remote))
        run(seed, "git", "remote", "add", "origin", str(origin))
        committed(seed)
        run(seed, "git", "push", "-q", "origin", "HEAD:main")
        clones = [tmp_path / name for name in ("a", "b", "c")]
        for clone in clones:
            run(tmp_path, "git", "clone", "-q", str(origin), str(clone))
        env = environment(MLFLOW_TRACKING_URI=tracking_uri)
        # One trial each: two trials, one per clone, prove the study shared as well as more would.
        args = ["--study", "shared", "--trials", "1", "--storage", databases["optuna"], "--push", "origin", *QUICK]
        workers = [
            subprocess.Popen(
                [sys.executable, "search.py", *args],
                cwd=clone,
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for clone in clones[:2]
        ]
        outputs = [worker.communicate(timeout=900)[0] for worker in workers]
        assert [worker.returncode for worker in workers] == [0, 0], outputs

        import optuna

        study = optuna.load_study(study_name="shared", storage=databases["optuna"])
        assert sorted(t.number for t in study.trials) == [0, 1]
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
        local = [set(run(clone, "dvc", "exp", "list", "--name-only", env=env).stdout.split()) for clone in clones[:2]]
        assert local[0] and local[1] and not local[0] & local[1]  # one each: neither ran the other's trial
        assert local[0] | local[1] == {"shared-0", "shared-1"}

        from mlflow.tracking import MlflowClient

        trials, summaries = trial_runs(MlflowClient(tracking_uri), "shared")
        assert sorted(r.data.tags["search.trial"] for r in trials) == ["0", "1"]
        assert {r.info.status for r in trials} == {"FINISHED"} and len(summaries) == 1

        third = clones[2]
        run(third, "dvc", "exp", "pull", "-A", "origin", env=env)  # as the README says
        shown = shown_experiments(third, env)
        assert {"shared-0", "shared-1"} <= set(shown)
        assert all(shown[f"shared-{n}"]["eval"]["val_accuracy"] > 0 for n in range(2))
