"""Experiments that reproduce, under the real dvc and MLflow: resume after a kill, determinism, a queued sweep.

Steps of one story on one copy of the repository, in file order; the kill-and-resume test works on a copy
of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mnist_pipeline.checkpoint import load_checkpoint
from mnist_pipeline.compute.threads import available_cores

from conftest import REPO_ROOT, requires_mnist_mirror
from dvc_project import (
    all_runs,
    check_lineage,
    copy_project,
    environment,
    lock_outs,
    mlflow_client,
    results,
    run,
    run_results,
    shown_run_ids,
    stages_run,
    update_params,
)
from recipes import readme_recipes, recipe_params

pytestmark = [pytest.mark.e2e, requires_mnist_mirror()]

RESULT_FILES = ("metrics/train.json", "metrics/history.csv", "metrics/eval.json")
# What a killed training leaves as it was: every result of the last complete run (not the checkpoint, which
# the killed run replaced by its last whole epoch, nor the run file, which names the killed run).
KEPT_THROUGH_A_KILL = (*RESULT_FILES, "metrics/confusion.csv", "metrics/mistakes.csv", "plots/accuracy.png")
BUSY = [sys.executable, "-c", "while True: pass"]  # one busy single-threaded process


@pytest.fixture(scope="module")
def project(prepared_project, tmp_path_factory):
    project = copy_project(prepared_project, tmp_path_factory.mktemp("experiments"))
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "first run")  # the baseline every experiment below starts from
    return project


def _wait_for_epoch(project: Path, runs_before: int, epoch: int, process: subprocess.Popen) -> str:
    """Poll the MLflow store until a new run has logged `epoch`; return the run's id."""
    client = mlflow_client(project)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, "training ended before it could be killed"
        runs = all_runs(project)
        if len(runs) > runs_before:
            steps = [m.step for m in client.get_metric_history(runs[-1].info.run_id, "test_accuracy")]
            if epoch in steps:
                return runs[-1].info.run_id
        time.sleep(0.3)
    pytest.fail(f"training never finished epoch {epoch}")


def test_killed_training_resumes_the_same_run_and_ends_bit_identical(prepared_project, tmp_path):
    project = copy_project(prepared_project, tmp_path / "resume")
    # The wide network with Adam, one-cycle, dropout and augmentation: every state a resume must restore
    # (batch norm statistics, Adam moments, the schedule, both random generators), at ~2 s an epoch, slow
    # enough to be killed mid-run.
    # Nothing about threads pinned: the shards fix the bits, whatever the threads (mnist_pipeline.compute.shards).
    update_params(
        project,
        {
            "epochs": 3,
            "model": "wide",
            "optimizer": "adamw",
            "schedule": "onecycle",
            "augment": {"shift": 1.0},
            "data": {"max_train_images": 6000},
        },
    )
    runs_before = len(all_runs(project))
    before = {name: (project / name).read_bytes() for name in KEPT_THROUGH_A_KILL}
    repro = subprocess.Popen(
        ["dvc", "repro"],
        cwd=project,
        env=environment(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed_run = _wait_for_epoch(project, runs_before, 1, repro)
    os.killpg(repro.pid, signal.SIGKILL)  # as a power cut would: no handler runs
    repro.wait()

    # The last complete run's results are untouched; the checkpoint is the killed run's last whole epoch,
    # marked unfinished so that nothing takes it for a result, with no half-written file beside it; the run
    # id beside it (not in it: the checkpoint is a result) names the killed run, which the resume continues.
    assert {name: (project / name).read_bytes() for name in KEPT_THROUGH_A_KILL} == before
    partial = load_checkpoint(project / "models" / "model.pt")
    assert 1 <= partial["epoch"] < 3 and not partial["complete"]
    assert not list((project / "models").glob(".model.pt.*"))
    assert "mlflow_run_id" not in partial
    assert json.loads((project / "metrics" / "mlflow_run.json").read_text())["run_id"] == killed_run
    refused = run(project, "dvc", "repro", "--single-item", "evaluate", check=False)
    assert refused.returncode != 0
    assert (
        f"models/model.pt: training stopped after epoch {partial['epoch']} of 3; run dvc repro to finish it"
        in refused.stderr
    )
    status = run(project, "dvc", "status").stdout
    assert "train:" in status and "up to date" not in status  # DVC knows the results are stale

    # The resume on one thread, the uninterrupted run below on `auto` (2 on 2 cores): only the shards fix the bits.
    update_params(project, {"threads": 1})
    resumed = run(project, "dvc", "repro")
    assert f"train: resuming after epoch {partial['epoch']} of 3 from the unfinished checkpoint" in resumed.stdout
    assert stages_run(resumed.stdout) == ["train", "evaluate", "plot", "register"]
    assert run(project, "dvc", "status").stdout.strip() == "Data and pipelines are up to date."
    assert "on 1 thread (threads: 1 in params.yaml" in resumed.stdout
    assert len(all_runs(project)) == runs_before + 1  # the killed run continued: no duplicate
    finished = mlflow_client(project).get_run(killed_run)
    assert finished.info.status == "FINISHED"
    # Each start's thread count, a tag: `auto` (one per shard up to the cores) first, then 1 from the resume on.
    assert finished.data.tags["train.threads"] == (
        f"{min(2, available_cores())} from epoch 1, 1 from epoch {partial['epoch'] + 1}"
    )
    steps = [m.step for m in mlflow_client(project).get_metric_history(killed_run, "test_accuracy")]
    assert sorted(steps) == [1, 2, 3]  # every epoch logged exactly once
    resumed_results = {name: (project / name).read_text() for name in RESULT_FILES}
    resumed_checkpoint = (project / "models" / "model.pt").read_bytes()

    resumed_metrics = run_results(project, killed_run)
    # The same params once more, uninterrupted: on the CPU it must give the very same bits.
    update_params(project, {"threads": "auto"})
    again = run(project, "dvc", "repro", "-f", "--downstream", "train")
    assert "train: the checkpoint holds a finished training; training from scratch" in again.stdout
    assert {name: (project / name).read_text() for name in RESULT_FILES} == resumed_results
    assert (project / "models" / "model.pt").read_bytes() == resumed_checkpoint  # the same bytes, not only weights
    straight_run = json.loads((project / "metrics" / "mlflow_run.json").read_text())["run_id"]
    assert straight_run != killed_run and run_results(project, straight_run) == resumed_metrics


def test_the_same_params_give_the_same_bits_beside_busy_processes_and_at_any_thread_count(prepared_project, tmp_path):
    """Nothing pinned: the session's first repro, again beside a busy process on every core, again on one thread."""
    project = copy_project(prepared_project, tmp_path / "load")
    first = results(project)
    hogs = [subprocess.Popen(BUSY) for _ in range(os.cpu_count() or 1)]
    try:
        busy = run(project, "dvc", "repro", "-f", "--downstream", "train")
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert stages_run(busy.stdout) == ["train", "evaluate", "plot", "register"]
    assert results(project) == first
    update_params(project, {"threads": 1})
    assert run(project, "dvc", "status").stdout.strip() == "Data and pipelines are up to date."  # speed only
    runs_before = {r.info.run_id for r in all_runs(project)}
    one_thread = run(project, "dvc", "repro", "-f", "train")  # the target alone: nothing downstream of it runs
    assert "on 1 thread (threads: 1 in params.yaml" in one_thread.stdout
    # The same bytes, so the next repro keeps the evaluation and the plots; register still runs, for the
    # new run's sake, and the new run gets the same results as the first.
    assert stages_run(run(project, "dvc", "repro").stdout) == ["register"]
    assert results(project) == first
    (new_run,) = [r for r in all_runs(project) if r.info.run_id not in runs_before]
    assert (
        new_run.data.metrics["eval_accuracy"]
        == json.loads((project / "metrics" / "eval.json").read_text())["test_accuracy"]
    )


def _queue_done(project: Path) -> bool:
    status = run(project, "dvc", "queue", "status").stdout
    return not any(word in status for word in ("Queued", "Running"))


def test_a_queued_sweep_is_one_named_mlflow_run_per_experiment_in_the_repo_store(project, experimented_project):
    runs_before = {r.info.run_id for r in all_runs(project)}
    baseline = run(project, "git", "rev-parse", "HEAD").stdout.strip()
    # lr=0.01 would be the baseline itself, whose run exists: nothing would run for it. Two, side by side.
    run(project, "dvc", "exp", "run", "--queue", "-S", "lr=0.02,0.05")
    run(project, "dvc", "queue", "start", "-j", "2")
    try:
        deadline = time.monotonic() + 600
        while not _queue_done(project):
            assert time.monotonic() < deadline, run(project, "dvc", "queue", "status").stdout
            time.sleep(3)
    finally:
        run(project, "dvc", "queue", "stop", check=False)
    status = run(project, "dvc", "queue", "status").stdout
    assert "Failed" not in status, status

    shown = json.loads(run(project, "dvc", "exp", "show", "--json").stdout)
    experiments, commits = {}, {}
    for revision in shown:
        for experiment in revision.get("experiments") or []:
            for rev in experiment["revs"]:
                params = rev["data"]["params"]["params.yaml"]["data"]
                metrics = rev["data"]["metrics"]["metrics/eval.json"]["data"]
                experiments[rev["name"]] = (params["lr"], metrics["test_accuracy"])
                commits[rev["name"]] = rev["rev"]
    run_ids = shown_run_ids(project)
    new_runs = [r for r in all_runs(project) if r.info.run_id not in runs_before]
    by_name = {r.info.run_name: r for r in new_runs}
    queued = set(by_name)
    assert len(queued) == 2, sorted(by_name)
    assert sorted(float(by_name[name].data.params["lr"]) for name in queued) == [0.02, 0.05]
    for name in queued:
        mlflow_run = by_name[name]
        assert name in experiments, (name, sorted(experiments))
        assert mlflow_run.info.status == "FINISHED"
        assert mlflow_run.data.tags["dvc.exp_name"] == name
        assert mlflow_run.data.tags["mlflow.source.git.commit"] == baseline
        assert float(mlflow_run.data.params["lr"]) == experiments[name][0]
        assert mlflow_run.data.metrics["eval_accuracy"] == pytest.approx(experiments[name][1])
        # Lineage, from the queue worker's temporary copy: its dvc.lock and params.yaml are the experiment's commit's.
        assert run_ids[name] == mlflow_run.info.run_id
        assert mlflow_run.data.tags["reproduce.command"] == f"dvc exp apply {name}"
        check_lineage(
            project,
            mlflow_run.info.run_id,
            run(project, "git", "show", f"{commits[name]}:dvc.lock").stdout,
            run(project, "git", "show", f"{commits[name]}:params.yaml").stdout,
        )
    table = run(
        project,
        "dvc",
        "exp",
        "show",
        "--no-pager",
        "--drop",
        "Created|data.*|paths.*|plots.*|tracking.*",
        env=environment(COLUMNS="220"),
    )
    print("\n" + table.stdout)
    print({name: by_name[name].data.params["lr"] for name in sorted(queued)})

    first, second = sorted(queued)[:2]
    diff = run(project, "dvc", "plots", "diff", first, second, "--json").stdout
    assert first in diff and second in diff and "test_accuracy" in diff
    assert "train_loss" in diff and "test_loss" in diff  # the README's loss curves, both experiments on one chart

    # The session's `dvc exp run -S lr=0.05` ran alone, in another copy of the same baseline (conftest's
    # experimented_project): the queued lr=0.05 beside another training must have its bits.
    name = next(n for n in queued if experiments[n][0] == 0.05)
    alone = experimented_project.path
    for path in RESULT_FILES + ("metrics/confusion.csv", "metrics/mistakes.csv"):
        assert (alone / path).read_text() == run(project, "git", "show", f"{commits[name]}:{path}").stdout, path
    assert lock_outs((alone / "dvc.lock").read_text()) == lock_outs(
        run(project, "git", "show", f"{commits[name]}:dvc.lock").stdout
    )  # the checkpoint's and plots' too
    alone_run = json.loads((alone / "metrics" / "mlflow_run.json").read_text())["run_id"]
    assert run_results(alone, alone_run) == run_results(project, by_name[name].info.run_id)


def _committed_file(project: Path, path: str) -> Path:
    """The DVC cache file of `path` as the commit HEAD's dvc.lock records it."""
    lock = yaml.safe_load(run(project, "git", "show", "HEAD:dvc.lock").stdout)
    md5 = next(out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", []) if out["path"] == path)
    return project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def test_two_processes_train_like_one_and_log_one_run(project):
    """`dvc exp run -S nproc=2`: two processes under torchrun (Gloo), one MLflow run, the single process's model."""
    single_metrics = json.loads(run(project, "git", "show", "HEAD:metrics/eval.json").stdout)
    single_weights = load_checkpoint(_committed_file(project, "models/model.pt"))["model_state"]
    runs_before = {r.info.run_id for r in all_runs(project)}

    done = run(project, "dvc", "exp", "run", "-S", "nproc=2")
    assert stages_run(done.stdout) == ["train", "evaluate", "plot", "register"]
    assert "train: launching 2 processes with torchrun" in done.stdout and "in 2 processes" in done.stdout
    print("\n" + "\n".join(line for line in done.stdout.splitlines() if line.startswith("train:")))

    new_runs = [r for r in all_runs(project) if r.info.run_id not in runs_before]
    assert len(new_runs) == 1  # rank 0 alone talks to MLflow
    (mlflow_run,) = new_runs
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.data.params["nproc"] == "2"
    steps = [m.step for m in mlflow_client(project).get_metric_history(mlflow_run.info.run_id, "test_accuracy")]
    assert sorted(steps) == [1, 2]  # each epoch logged once, not once per rank

    # Each rank took half of every batch of 64 and DDP averaged their gradients: the same SGD steps as one
    # process, up to float rounding.
    metrics = json.loads((project / "metrics" / "eval.json").read_text())
    assert metrics["test_accuracy"] == pytest.approx(single_metrics["test_accuracy"], abs=0.01)
    assert metrics["test_loss"] == pytest.approx(single_metrics["test_loss"], rel=0.02)
    weights = load_checkpoint(project / "models" / "model.pt")["model_state"]
    gap = max((weights[name] - tensor).abs().max().item() for name, tensor in single_weights.items())
    print(f"largest weight difference, 2 processes vs 1: {gap:.2e}")
    assert 0 < gap < 1e-3


RECIPES = readme_recipes((REPO_ROOT / "README.md").read_text())


def _flat(params, prefix=""):
    for key, value in params.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_each_recipe_runs_through_dvc_exp_run_starts_fresh_and_logs_the_values_it_set(project):
    for name, assignments in RECIPES.items():
        runs_before = {r.info.run_id for r in all_runs(project)}
        # The recipe as the README writes it, then one epoch on the test slice to keep the test quick;
        # --temp: the workspace stays as it is.
        flags = [word for assignment in assignments for word in ("-S", assignment)]
        done = run(project, "dvc", "exp", "run", "--temp", "-n", name, *flags, "-S", "epochs=1")
        recipe = dict(_flat(recipe_params(assignments)), epochs=1)
        # Changed params: the finished baseline checkpoint is not resumed, and the stage says so.
        assert "train: the checkpoint holds a finished training; training from scratch" in done.stdout
        assert stages_run(done.stdout) == ["train", "evaluate", "plot", "register"]
        assert f"train: {recipe['model']} network" in done.stdout

        (mlflow_run,) = [r for r in all_runs(project) if r.info.run_id not in runs_before]
        assert mlflow_run.info.status == "FINISHED" and mlflow_run.info.run_name == name
        logged = mlflow_run.data.params
        for key, value in recipe.items():
            assert (logged[key] == value) if isinstance(value, str) else float(logged[key]) == value, (name, key)
        assert mlflow_run.data.metrics["eval_accuracy"] > 0.5  # it learned, even from 2000 images in one epoch

        shown = json.loads(run(project, "dvc", "exp", "show", "--json").stdout)
        params = next(
            rev["data"]["params"]["params.yaml"]["data"]
            for revision in shown
            for experiment in (revision.get("experiments") or [])
            for rev in experiment["revs"]
            if rev["name"] == name
        )
        for key, value in recipe.items():
            section, _, leaf = key.rpartition(".")
            assert (params[section][leaf] if section else params[key]) == value, (name, key)


def test_a_queued_experiment_runs_the_code_it_was_queued_with(prepared_project, tmp_path):
    """DVC runs a queued experiment in a copy of the repository, made when it was queued: that copy's code must
    run, the code DVC hashed, not whatever the installed package points at (why dvc.yaml keeps PYTHONPATH=src)."""
    project = copy_project(prepared_project, tmp_path / "queued-code")
    # The plots' code: a change there reruns plot and register only, not a training.
    plots = project / "src" / "mnist_pipeline" / "plots.py"
    original = plots.read_text()
    plots.write_text(original + '\nprint("code as queued")\n')  # a change of code, queued as an experiment
    run(project, "dvc", "exp", "run", "--queue", "-n", "as-queued")
    plots.write_text(original)  # the workspace moves on before the queue runs
    run(project, "dvc", "queue", "start", "-j", "1")
    deadline = time.monotonic() + 300
    while not _queue_done(project):
        assert time.monotonic() < deadline, run(project, "dvc", "queue", "status").stdout
        time.sleep(2)
    logs = run(project, "dvc", "queue", "logs", "as-queued").stdout
    assert "Running stage 'plot'" in logs and "code as queued" in logs
    assert "Running stage 'train'" not in logs
