"""search.yaml: ranges, choices and grids, each checked against the params' own rules before any training."""

from pathlib import Path

import pytest

from mnist_pipeline.search.space import (
    Choices,
    Grid,
    Range,
    SearchSpaceError,
    load_space,
    nested,
    parse_assignments,
    parse_space,
)

from conftest import REPO_ROOT


def test_the_committed_space_parses():
    space = load_space(REPO_ROOT / "search.yaml")
    assert space.entries["lr"] == Range(0.001, 0.3, log=True)
    assert isinstance(space.entries["batch_size"], Choices) and not space.is_grid


def test_ranges_choices_and_grids():
    space = parse_space(
        {
            "lr": {"low": 0.01, "high": 0.1, "log": True},
            "epochs": {"low": 1, "high": 3},
            "model": ["reference", "compact"],
        }
    )
    assert space.entries["epochs"].integer and not space.entries["lr"].integer
    assert space.entries["model"] == Choices(("reference", "compact"))
    grid = parse_space({"lr": {"grid": [0.01, 0.1]}, "momentum": {"grid": [0.5]}})
    assert grid.is_grid and grid.grid() == {"lr": [0.01, 0.1], "momentum": [0.5]}
    assert grid.entries["lr"] == Grid((0.01, 0.1))


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            {"lrr": [0.1]},
            "search.yaml: lrr: not a param of params.yaml (dotted, as dvc exp run -S takes it: lr, "
            "data.max_train_images, ...)",
        ),
        ({"lr": {"low": 0.1, "high": 0.1}}, "search.yaml: lr: an empty range (low 0.1 is not below high 0.1)"),
        ({"lr": {"low": 0.3, "high": 0.1}}, "search.yaml: lr: an empty range (low 0.3 is not below high 0.1)"),
        ({"lr": []}, "search.yaml: lr: an empty list of choices; give at least one value"),
        ({"lr": {"grid": []}}, "search.yaml: lr: an empty grid; give at least one value"),
        ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, "search.yaml: lr: a log range needs low > 0 (got 0.0)"),
        ({"lr": {"low": 0.01, "high": 20.0}}, "search.yaml: lr: lr: got 20.0; must be > 0.0 and <= 10.0"),
        (
            {"model": ["reference", "resnet"]},
            "search.yaml: model: model: got 'resnet'; allowed: reference, compact, wide",
        ),
        ({"lr": {"low": 0.01, "hi": 0.1}}, "search.yaml: lr: a range takes low, high and optionally log (got low, hi)"),
        (
            {"lr": 0.1},
            "search.yaml: lr: got 0.1; expected a range {low: ..., high: ...}, a list of choices, or {grid: [...]}",
        ),
        (
            {"lr": {"grid": [0.1]}, "momentum": [0.5, 0.9]},
            "search.yaml: a grid cannot be mixed with ranges or choices; make every entry a grid, or turn the grids into "
            "lists of choices",
        ),
        ([], "search.yaml: expected a mapping of params to ranges, choices or grids, got []"),
    ],
)
def test_a_bad_space_is_one_line_naming_the_entry(raw, message):
    with pytest.raises(SearchSpaceError) as caught:
        parse_space(raw)
    assert str(caught.value) == message


def test_fixed_values_are_read_as_dvc_reads_them_and_checked():
    assert parse_assignments(["epochs=1", "data.max_train_images=2000", "data.max_test_images=null"]) == {
        "epochs": 1,
        "data.max_train_images": 2000,
        "data.max_test_images": None,
    }
    with pytest.raises(SearchSpaceError, match=r"^-S epochs=0: epochs: got 0; must be >= 1 and <= 1000$"):
        parse_assignments(["epochs=0"])
    with pytest.raises(SearchSpaceError, match=r"^-S ep=1: expected param=value with a param of params.yaml"):
        parse_assignments(["ep=1"])


def test_dotted_names_nest_as_params_yaml_does():
    assert nested({"lr": 0.1, "data.validation_images": 5000}) == {"lr": 0.1, "data": {"validation_images": 5000}}


def test_a_missing_space_file_says_so(tmp_path):
    with pytest.raises(SearchSpaceError, match=r"nope.yaml: not found; give --space, or run from the repository root$"):
        load_space(tmp_path / "nope.yaml")


def test_a_space_that_is_not_yaml_is_one_line_naming_where(tmp_path):
    (tmp_path / "search.yaml").write_text("lr: {low: 0.01, high: [0.1}\n")
    with pytest.raises(SearchSpaceError, match=r"search.yaml: invalid YAML at line \d+, column \d+: [^\n]+$"):
        load_space(tmp_path / "search.yaml")


@pytest.mark.parametrize(
    "text, message",
    [
        ("lrr: [1]\n", "lrr: not a param of params.yaml"),
        ("lr: {low: 0.1, high: 0.01}\n", "lr: an empty range"),
        ("lr: {low: 0.01, high: 20.0}\n", "lr: lr: got 20.0"),
        ("[]\n", "expected a mapping of params"),
    ],
)
def test_errors_in_another_space_file_name_that_file(tmp_path, monkeypatch, text, message):
    """`search.py --space other.yaml`: the line names other.yaml, as given, never search.yaml."""
    monkeypatch.chdir(tmp_path)
    Path("other.yaml").write_text(text)
    with pytest.raises(SearchSpaceError) as caught:
        load_space("other.yaml")
    assert str(caught.value).startswith(f"other.yaml: {message}")


def test_only_a_grid_search_has_a_grid():
    with pytest.raises(ValueError, match="not a grid search"):
        parse_space({"model": ["reference", "compact"]}).grid()
