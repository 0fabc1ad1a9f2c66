"""The search's pieces that need no training: trial values, the storage, the sampler, what it reports."""

import subprocess

import optuna
import pytest

from mnist_pipeline.search import (DEFAULT_VALIDATION_IMAGES, SearchError, _yaml_value, assignments, best_lines,
                                   existing_names, experiment_ref, open_storage, sampler, trial_name)
from mnist_pipeline.search_space import parse_space


def test_each_trial_holds_out_validation_images_unless_the_user_chose_how_many():
    assert assignments({"epochs": 1}, {"lr": 0.1}) == {"data.validation_images": DEFAULT_VALIDATION_IMAGES,
                                                        "epochs": 1, "lr": 0.1}
    assert assignments({"data.validation_images": 1000}, {})["data.validation_images"] == 1000
    with pytest.raises(SearchError, match=r"^data.validation_images: a search scores trials on held-out training "
                                          r"images, never on the test set"):
        assignments({"data.validation_images": 0}, {})


def test_values_reach_dvc_as_yaml():
    assert [_yaml_value(v) for v in (None, True, False, 3, 0.1, "compact")] == ["null", "true", "false", "3", "0.1",
                                                                                "compact"]
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
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "base"], check=True)
    for name in ("s-0", "s-12", "other-1", "s-x"):
        subprocess.run(["git", "-C", str(tmp_path), "update-ref", f"refs/exps/ab/cdef/{name}", "HEAD"], check=True)
    assert experiment_ref(tmp_path, "s-12") == "refs/exps/ab/cdef/s-12" and experiment_ref(tmp_path, "s-3") is None
    assert existing_names(tmp_path, "s") == ["s-0", "s-12"]
