import dataclasses
import os
import subprocess
import time

import pytest
import yaml

from mnist_pipeline.cli import run_stage
from mnist_pipeline.config import ConfigError, TrainConfig, flatten, load_config, parse_config

from conftest import REPO_ROOT


def test_repo_params_are_the_reference_defaults():
    config = load_config(REPO_ROOT / "params.yaml")
    assert config.train == TrainConfig(lr=0.01, momentum=0.5, batch_size=64, epochs=10, seed=1, device="auto")
    assert (config.train.model, config.train.optimizer, config.train.schedule) == ("reference", "sgd", "constant")
    assert config.train.nproc == "auto" and config.train.kernels == "auto" and not config.augment.enabled
    assert (config.data.mean, config.data.std) == (0.1307, 0.3081)
    assert config.data.max_train_images is None and config.data.max_test_images is None


def test_config_is_frozen():
    config = parse_config({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.lr = 1.0


def test_to_dict_round_trips_and_has_top_level_knobs():
    config = parse_config({"lr": 0.05, "data": {"max_train_images": 100}})
    as_dict = config.to_dict()
    assert as_dict["lr"] == 0.05 and as_dict["data"]["max_train_images"] == 100
    assert parse_config(as_dict) == config


def test_int_given_for_float_is_accepted_as_float():
    config = parse_config({"lr": 1})
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"lrr": 0.1}, "lrr: unknown key; allowed at the top level: lr, momentum"),
        ({"data": {"meen": 0.1}}, "data.meen: unknown key; allowed here: dir, mean, std"),
        ({"lr": "fast"}, "lr: got 'fast'; expected a number"),
        ({"epochs": 2.5}, "epochs: got 2.5; expected an integer"),
        ({"epochs": True}, "epochs: got True; expected an integer"),
        ({"lr": -1}, "lr: got -1.0; must be > 0.0"),
        ({"lr": 0}, "lr: got 0.0; must be > 0.0"),
        ({"batch_size": 0}, "batch_size: got 0; must be >= 1"),
        ({"epochs": 0}, "epochs: got 0; must be >= 1"),
        ({"momentum": 1.5}, "momentum: got 1.5; must be >= 0.0 and <= 1.0"),
        ({"device": "tpu"}, "device: got 'tpu'; allowed: auto, cpu, cuda"),
        ({"lr": None}, "lr: got null; expected a number"),
        ({"lr": float("nan")}, "lr: got nan; expected a number"),
        ({"data": {"max_train_images": 0}}, "data.max_train_images: got 0; must be >= 1"),
        ({"data": {"max_train_images": "all"}}, "data.max_train_images: got 'all'; expected an integer or null"),
        ({"data": [1, 2]}, "data: expected a mapping"),
        ({"tracking": {"log_model": "yes"}}, "tracking.log_model: got 'yes'; expected true or false"),
        ([1, 2], "params.yaml: expected a mapping of keys to values, got list"),
        ({"model": "resnet"}, "model: got 'resnet'; allowed: reference, compact, wide"),
        ({"optimizer": "lbfgs"}, "optimizer: got 'lbfgs'; allowed: sgd, adam, adamw"),
        ({"schedule": "step"}, "schedule: got 'step'; allowed: constant, onecycle, cosine"),
        ({"label_smoothing": 0.7}, "label_smoothing: got 0.7; must be >= 0.0 and <= 0.5"),
        ({"weight_decay": -0.1}, "weight_decay: got -0.1; must be >= 0.0 and <= 1.0"),
        ({"precision": "fp16"}, "precision: got 'fp16'; allowed: fp32, bf16"),
        ({"nproc": 0}, "nproc: got 0; must be >= 1 and <= 64"),
        ({"nproc": "many"}, "nproc: got 'many'; expected an integer or auto"),
        ({"nproc": None}, "nproc: got null; expected an integer or auto"),
        ({"nproc": 1.5}, "nproc: got 1.5; expected an integer or auto"),
        ({"kernels": "fused"}, "kernels: got 'fused'; allowed: auto, torch"),
        ({"shards": 0}, "shards: got 0; must be >= 1 and <= 256"),
        ({"shards": "auto"}, "shards: got 'auto'; expected an integer"),
        ({"threads": 0}, "threads: got 0; must be >= 1 and <= 1024"),
        ({"threads": -2}, "threads: got -2; must be >= 1 and <= 1024"),
        ({"threads": "all"}, "threads: got 'all'; expected an integer or auto"),
        ({"threads": 1.5}, "threads: got 1.5; expected an integer or auto"),
        ({"augment": {"shift": -1}}, "augment.shift: got -1.0; must be >= 0.0 and <= 6.0"),
        ({"augment": {"flip": True}}, "augment.flip: unknown key; allowed here: shift, rotate"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(raw, message):
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    text = str(caught.value)
    assert text.startswith(message)
    assert "\n" not in text


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match=r"params.yaml: not found"):
        load_config(tmp_path / "params.yaml")


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("lr: 0.01\nepochs: [10\n")
    with pytest.raises(ConfigError, match=r"params.yaml: invalid YAML at line \d+, column \d+"):
        load_config(path)


def test_empty_params_file_gives_defaults(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("")
    assert load_config(path) == parse_config({})


def test_more_shards_than_images_in_a_batch_is_refused_with_one_line():
    with pytest.raises(ConfigError) as caught:
        parse_config({"batch_size": 4, "shards": 5})
    assert str(caught.value) == (
        "shards: got 5; a batch of 4 images (batch_size) cannot be split into more parts "
        "than it has images, so at most 4"
    )
    assert parse_config({"batch_size": 4, "shards": 4}).train.shards == 4


def test_validation_images_leave_the_rest_for_training_and_max_train_images_must_fit():
    data = parse_config({"data": {"validation_images": 5000}}).data
    assert data.training_images == 55000 and parse_config({}).data.training_images is None
    assert parse_config({"data": {"validation_images": 5000, "max_train_images": 2000}}).data.training_images == 2000
    with pytest.raises(ConfigError) as caught:
        parse_config({"data": {"validation_images": 5000, "max_train_images": 58000}})
    assert str(caught.value) == (
        "data.max_train_images: got 58000; with data.validation_images 5000 held out, "
        "55000 training images remain, so at most 55000"
    )


def test_threads_beyond_this_machines_cores_still_parse():
    # A checkpoint's config made on a bigger machine parses here (evaluate rebuilds from it); the stages refuse
    # such a count when they choose their threads (mnist_pipeline.compute.threads).
    assert parse_config({"threads": 4096 // 4}).train.threads == 1024


def test_flatten_names_params_as_dvc_does():
    assert flatten({"lr": 0.1, "data": {"mean": 0.5, "dir": "d"}}) == {"lr": 0.1, "data.mean": 0.5, "data.dir": "d"}


def test_the_committed_params_yaml_is_every_value_the_config_holds():
    """Every key of params.yaml is a field of the config and every field is in params.yaml: none defaulted unseen."""
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert load_config(REPO_ROOT / "params.yaml").to_dict() == raw


# After `dvc exp run -S lr=-1` fails, params.yaml still holds lr: -1; the error line says how to get
# the committed one back. Each test is a real git repository in the state DVC leaves behind.

COMMITTED, WRITTEN = "lr: 0.01\n", "lr: -1.0\n"  # the same size, as a stale index needs
RESTORE = "git show HEAD:params.yaml > params.yaml restores the committed one)"


def _git(repo, *args) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True)


@pytest.fixture
def exp_run_repo(tmp_path, monkeypatch):
    """A git repository with params.yaml committed, as `dvc exp run` runs a stage in it."""
    params = tmp_path / "params.yaml"
    params.write_text(COMMITTED)
    past = time.time_ns() - 100 * 10**9  # older than the index: git trusts the file's size and time
    os.utime(params, ns=(past, past))
    for args in (
        ("init", "-q"),
        ("config", "core.trustctime", "false"),
        ("add", "params.yaml"),
        ("commit", "-qm", "c"),
    ):
        assert _git(tmp_path, *args).returncode == 0
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_EXP_NAME", "bad-lr")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    return params


def _stage_error(capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        run_stage(load_config)
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_a_bad_value_from_exp_run_says_how_to_restore_params(exp_run_repo, capsys):
    exp_run_repo.write_text(WRITTEN)
    assert _stage_error(capsys) == (
        f"error: lr: got -1.0; must be > 0.0 and <= 10.0 (dvc exp run -S wrote this into params.yaml; {RESTORE}\n"
    )
    subprocess.run("git show HEAD:params.yaml > params.yaml", shell=True, check=True)
    assert exp_run_repo.read_text() == COMMITTED


def test_a_stale_git_index_is_named_and_the_restore_still_works(exp_run_repo, capsys):
    past = exp_run_repo.stat().st_mtime_ns
    exp_run_repo.write_text(WRITTEN)
    os.utime(exp_run_repo, ns=(past, past))  # same size and time: git's index entry still matches
    assert _git(exp_run_repo.parent, "status", "--porcelain").stdout == ""  # the symptom
    _git(exp_run_repo.parent, "checkout", "params.yaml")
    assert exp_run_repo.read_text() == WRITTEN  # ... and checkout does nothing
    assert _stage_error(capsys) == (
        "error: lr: got -1.0; must be > 0.0 and <= 10.0 (dvc exp run -S wrote this "
        "into params.yaml, though git's index is stale and git status does not show it; "
        f"{RESTORE}\n"
    )
    subprocess.run("git show HEAD:params.yaml > params.yaml", shell=True, check=True)
    assert exp_run_repo.read_text() == COMMITTED


@pytest.mark.parametrize("case", ["plain dvc repro", "queued or temp copy", "bad value committed"])
def test_no_restore_hint_where_restoring_would_not_apply(exp_run_repo, capsys, monkeypatch, tmp_path_factory, case):
    exp_run_repo.write_text(WRITTEN)
    if case == "plain dvc repro":
        monkeypatch.delenv("DVC_EXP_NAME")
    elif case == "queued or temp copy":
        monkeypatch.setenv("DVC_ROOT", str(tmp_path_factory.mktemp("users-repo")))
    else:
        _git(exp_run_repo.parent, "commit", "-qam", "bad")
    assert _stage_error(capsys) == "error: lr: got -1.0; must be > 0.0 and <= 10.0\n"


def test_a_deleted_params_file_gets_no_restore_hint(exp_run_repo, capsys):
    exp_run_repo.unlink()
    assert _stage_error(capsys) == (
        "error: params.yaml: not found; run from the repository root, where params.yaml lives\n"
    )
