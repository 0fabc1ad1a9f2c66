"""The real `dvc repro` and `dvc exp run` on a copy of the repository, with a real MLflow store.

The tests in this module are steps of one story and run in file order on one
copy of the session's project after its first repro (see conftest): the first
repro, a no-op repro, a plot-only change. The experiment is the session's copy
that the browser tests also look at.
"""

from __future__ import annotations

import json
import re
import sys

import pytest

from mnist_pipeline.compute.threads import available_cores

from conftest import c_compiler, require, requires_mnist_mirror
from dvc_project import (
    all_runs,
    check_lineage,
    copy_project,
    environment,
    mlflow_client,
    predicts_like_evaluate,
    run,
    shown_run_ids,
    stages_run,
    update_params,
)

pytestmark = [pytest.mark.e2e, requires_mnist_mirror()]


@pytest.fixture(scope="module")
def project(prepared_project, tmp_path_factory):
    """A copy of the session's project after its first `dvc repro` (conftest's prepared_project)."""
    return copy_project(prepared_project, tmp_path_factory.mktemp("project"))


def stage_threads(output: str, stage: str) -> tuple[int, int]:
    """The thread count a stage printed and the cores it names."""
    if stage == "train":
        pattern = (
            r"^train: 2 shards per batch on (\d+) threads? \(threads: auto, 2 shards, (\d+) cores?\); "
            r"the results depend on shards, never on threads$"
        )
    else:
        pattern = rf"^{stage}: (\d+) threads? \(threads: auto, (\d+) cores?\); the results do not depend on them$"
    line = re.search(pattern, output, re.MULTILINE)
    assert line, output
    return int(line.group(1)), int(line.group(2))


def test_first_repro_runs_every_stage_and_writes_every_output(project, prepared_project):
    first = prepared_project.output
    assert stages_run(first.stdout) == ["download", "train", "evaluate", "plot", "register"]
    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert (project / "data" / "mnist" / name).stat().st_size > 0
    assert (project / "models" / "model.pt").is_file()
    history = (project / "metrics" / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,train_loss,test_loss,test_accuracy" and len(history) == 3
    evaluation = json.loads((project / "metrics" / "eval.json").read_text())
    assert 0.5 < evaluation["test_accuracy"] <= 1.0 and evaluation["test_images"] == 10000
    assert evaluation["test_loss"] > 0 and set(evaluation["per_class_accuracy"]) == set("0123456789")
    assert len((project / "metrics" / "confusion.csv").read_text().splitlines()) == 1 + 10000
    for png in ("accuracy.png", "loss.png", "confusion.png", "mistakes.png"):
        assert (project / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    # The user sees progress, the evaluation, and where the plots are. Outside a terminal (here, as in CI or
    # `dvc queue logs`) the progress is one line per epoch, not a bar redrawn with carriage returns (which the
    # capture, in text mode, turns into a line per redraw, as a file viewer does).
    for epoch in (1, 2):
        lines = [line for line in (first.stdout + first.stderr).splitlines() if f"epoch {epoch}/2" in line]
        assert len(lines) == 1 and lines[0].startswith(f"epoch {epoch}/2: ") and lines[0] in first.stdout, lines
    assert "evaluate: test accuracy" in first.stdout
    assert "plot: plots/accuracy.png" in first.stdout
    assert "register: best so far: registered as mnist-cnn version 1 (alias champion)" in first.stdout
    # `threads: auto`: one thread per shard up to the cores in training, every core in evaluation; each stage says so.
    assert stage_threads(first.stdout, "train") == (min(2, available_cores()), available_cores())
    assert stage_threads(first.stdout, "evaluate") == (available_cores(), available_cores())
    assert run(project, "dvc", "status").stdout.strip() == "Data and pipelines are up to date."


def test_the_evaluate_stage_runs_without_mlflow(prepared_project, tmp_path):
    """The register stage reports the evaluation to MLflow: importing MLflow in evaluate would double its time."""
    project = copy_project(prepared_project, tmp_path / "project")
    # The package first, as in a stage: its quick exit is the first exit handler, so the probe's runs before it.
    probe = (
        "import atexit, runpy, sys, mnist_pipeline.cli; "
        "atexit.register(lambda: print('mlflow loaded:', 'mlflow' in sys.modules)); "
        "runpy.run_path('stages/evaluate.py', run_name='__main__')"
    )
    done = run(project, sys.executable, "-c", probe, env=environment())
    assert "evaluate: test accuracy" in done.stdout and "mlflow loaded: False" in done.stdout
    assert set(json.loads((project / "metrics" / "eval_run.json").read_text())) == {"threads", "seconds"}


def test_first_repro_trains_and_evaluates_in_the_project_kernels_given_a_c_compiler(prepared_project):
    # params.yaml trains the reference network in fp32, one process, `kernels: auto` (the tests: on the CPU):
    # the project's kernels are what it must use wherever the compiler kernels.build looks for exists.
    first = prepared_project.output.stdout
    line = "the reference network in the project's own CPU kernels (kernels: auto): the same bits on any CPU"
    if c_compiler():
        assert f"train: {line}" in first and f"evaluate: {line}" in first
    else:
        assert "train: torch's kernels (kernels: auto, but no C compiler: `" in first
        # The fallback is right, but the kernels went untested: CI (which installs gcc) fails here.
        require(False, "a C compiler (cc) to train in the project's kernels", "apt-get install gcc (as .ci/run does)")


def test_first_repro_made_one_mlflow_run_with_params_metrics_plots_and_model(project, prepared_project):
    runs = all_runs(project)
    assert len(runs) == 1
    mlflow_run = runs[0]
    assert json.loads((project / "metrics" / "mlflow_run.json").read_text())["run_id"] == mlflow_run.info.run_id
    assert mlflow_run.info.status == "FINISHED"
    params = mlflow_run.data.params
    assert (params["lr"], params["epochs"], params["data.max_train_images"], params["plots.dpi"]) == (
        "0.01",
        "2",
        "2000",
        "100",
    )
    head = run(project, "git", "rev-parse", "HEAD").stdout.strip()
    assert mlflow_run.data.tags["mlflow.source.git.commit"] == head

    client = mlflow_client(project)
    accuracy_history = client.get_metric_history(mlflow_run.info.run_id, "test_accuracy")
    assert [m.step for m in accuracy_history] == [1, 2]
    assert [m.step for m in client.get_metric_history(mlflow_run.info.run_id, "train_loss")] == [1, 2]
    evaluation = json.loads((project / "metrics" / "eval.json").read_text())
    assert mlflow_run.data.metrics["eval_accuracy"] == pytest.approx(evaluation["test_accuracy"])
    # The thread counts are on the run as tags: settings that change the speed, never the results.
    output = prepared_project.output.stdout
    train_threads, eval_threads = (stage_threads(output, stage)[0] for stage in ("train", "evaluate"))
    assert mlflow_run.data.tags["train.threads"] == f"{train_threads} from epoch 1"
    assert mlflow_run.data.tags["evaluate.threads"] == str(eval_threads)
    assert not {"threads", "eval_threads"} & set(mlflow_run.data.metrics)
    plots = {a.path for a in client.list_artifacts(mlflow_run.info.run_id, "plots")}
    assert plots == {"plots/accuracy.png", "plots/loss.png", "plots/confusion.png", "plots/mistakes.png"}


def test_the_run_carries_its_data_version_system_metrics_and_what_reproduces_it_and_dvc_shows_it(project):
    (mlflow_run,) = all_runs(project)
    run_id = mlflow_run.info.run_id
    check_lineage(project, run_id, (project / "dvc.lock").read_text(), (project / "params.yaml").read_text())
    head = run(project, "git", "rev-parse", "HEAD").stdout.strip()
    assert mlflow_run.data.tags["reproduce.command"] == f"git checkout {head} && (dvc pull || dvc repro)"
    registered = mlflow_run.data.tags["evaluate.registered_version"]  # the first run is the first champion
    assert registered == "mnist-cnn/1"
    assert shown_run_ids(project)["workspace"] == run_id  # from `dvc exp show` to the run


def test_logged_model_predicts_digits_like_the_evaluate_stage(project):
    import mlflow.pyfunc

    run_id = all_runs(project)[0].info.run_id
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    predicts_like_evaluate(model, project)


def test_second_repro_runs_nothing(project):
    checkpoint_mtime = (project / "models" / "model.pt").stat().st_mtime_ns
    again = run(project, "dvc", "repro")
    assert stages_run(again.stdout) == []
    assert (project / "models" / "model.pt").stat().st_mtime_ns == checkpoint_mtime
    assert len(all_runs(project)) == 1


def test_the_readmes_dvc_commands_show_the_metrics_and_the_stage_graph(project):
    """`dvc metrics show` and `dvc dag`, as the README gives them."""
    evaluation = json.loads((project / "metrics" / "eval.json").read_text())
    metrics = json.loads(run(project, "dvc", "metrics", "show", "--json").stdout)
    shown = metrics[""]["data"]  # the workspace's
    assert shown["metrics/eval.json"]["data"]["test_accuracy"] == evaluation["test_accuracy"]
    assert shown["metrics/train.json"]["data"]["epochs"] == 2
    assert set(shown["metrics/mlflow_run.json"]["data"]) == {"run_id", "experiment", "model_uri"}
    table = run(project, "dvc", "metrics", "show").stdout
    assert "metrics/eval.json" in table and "test_accuracy" in table
    dag = run(project, "dvc", "dag", "--dot").stdout
    for upstream, downstream in [
        ("download", "train"),
        ("train", "evaluate"),
        ("evaluate", "plot"),
        ("plot", "register"),
    ]:
        assert f'"{upstream}" -> "{downstream}"' in dag, dag


def test_changing_a_plot_param_reruns_only_plot(project):
    before = (project / "plots" / "accuracy.png").read_bytes()
    update_params(project, {"plots": {"dpi": 60}})
    rerun = run(project, "dvc", "repro")
    assert stages_run(rerun.stdout) == ["plot", "register"]
    assert (project / "plots" / "accuracy.png").read_bytes() != before
    assert len(all_runs(project)) == 1


def test_exp_run_with_a_new_lr_is_a_second_mlflow_run_named_after_the_experiment(experimented_project):
    project, experiment = experimented_project.path, experimented_project.output
    assert stages_run(experiment.stdout) == ["train", "evaluate", "plot", "register"]  # not download
    names = run(project, "dvc", "exp", "list", "--name-only").stdout.split()
    assert len(names) == 1
    runs = all_runs(project)
    assert len(runs) == 2
    newest = runs[-1]
    assert newest.data.params["lr"] == "0.05"
    assert newest.info.run_name == names[0]
    assert newest.data.tags["dvc.exp_name"] == names[0]
    assert json.loads((project / "metrics" / "mlflow_run.json").read_text())["run_id"] == newest.info.run_id
    assert shown_run_ids(project)[names[0]] == newest.info.run_id
    assert newest.data.tags["reproduce.command"] == f"dvc exp apply {names[0]}"


def test_a_clean_repro_and_exp_run_print_no_warning_and_no_traceback(prepared_project, experimented_project):
    """What a user reads: progress and results, nothing that looks as if something went wrong."""
    noise = re.compile(r"Warning\b|WARNING|Traceback")
    for done in (prepared_project.output, experimented_project.output):
        lines = (done.stdout + done.stderr).splitlines()
        assert [line for line in lines if noise.search(line)] == []
        assert any(line.startswith("train: logged model models:/") for line in lines)  # the model was logged
