"""dvc.yaml lists exactly what each stage reads, so `dvc repro` reruns exactly what a change affects."""

from __future__ import annotations

import ast
import dataclasses
import json

import pytest
import yaml

from mnist_pipeline.config import SECTIONS, TrainConfig

from conftest import REPO_ROOT, requires_mnist_mirror
from dvc_project import SMALL, copy_project, run, update_params

SRC = REPO_ROOT / "src"
PACKAGE = SRC / "mnist_pipeline"
STAGES = ("download", "train", "evaluate", "plot", "register")
UPSTREAM = {
    "download": (),
    "train": ("download",),
    "evaluate": ("download", "train"),
    "plot": ("train", "evaluate"),
    "register": ("train", "evaluate", "plot"),
}


def module_file(dotted: str):
    """The file of our package's module or subpackage `dotted` (mnist_pipeline.compute.kernels), or None."""
    path = SRC.joinpath(*dotted.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path) -> set[str]:
    """Our package's modules (dotted) that `path` imports anywhere in its body (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mnist_pipeline":
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "mnist_pipeline")
    return found


def module_closure(script) -> set[str]:
    """The files of every module `script` runs: what it imports, transitively, and each package's __init__.py
    on the way (Python runs mnist_pipeline/__init__.py before mnist_pipeline.config, and so on)."""
    seen, todo = set(), imported_modules(script)
    while todo:
        dotted = todo.pop()
        parts = dotted.split(".")
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            if name not in seen and module_file(name) is not None:
                seen.add(name)
                todo |= imported_modules(module_file(name))
    return {str(module_file(name).relative_to(REPO_ROOT)) for name in seen}


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_lists_exactly_the_code_it_runs(stage):
    declared = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"]
    code = {dep for dep in declared if dep.endswith(".py")}
    expected = {f"stages/{stage}.py"} | module_closure(REPO_ROOT / "stages" / f"{stage}.py")
    assert code == expected


def reruns(directly_changed: set[str]) -> list[str]:
    """What `dvc repro` runs: the changed stages and everything downstream of them."""
    result: list[str] = []
    for stage in STAGES:  # in pipeline order
        if stage in directly_changed or any(up in result for up in UPSTREAM[stage]):
            result.append(stage)
    return result


ALL = ["download", "train", "evaluate", "plot", "register"]
TRAINING = ["train", "evaluate", "plot", "register"]
PLOTTING = ["plot", "register"]
# Which stages a param's change must rerun, by section; a param added to a section is checked without an edit here.
RERUNS_BY_SECTION = {"train": TRAINING, "augment": TRAINING, "data": TRAINING, "plots": PLOTTING, "tracking": TRAINING}
EVALUATING = ["evaluate", "plot", "register"]
RERUNS_BY_PARAM = {
    "threads": [],  # the speed only: the same results, so nothing reruns
    "tracking.registered_model": ["register"],
    "data.dir": ALL,  # a new folder is a new download, and everything after it
    "plots.cmap": None,  # a string: see PARAM_CASES
    # Where each file goes: the stage that writes it and every stage that reads it rerun.
    "paths.checkpoint": TRAINING,
    "paths.train_metrics": TRAINING,
    "paths.history": TRAINING,
    "paths.mlflow_run": TRAINING,  # written by train, read by register
    "paths.eval_metrics": EVALUATING,
    "paths.confusion": EVALUATING,
    "paths.mistakes": EVALUATING,
    "paths.eval_run": EVALUATING,  # written by evaluate, read by register
    "paths.plots_dir": PLOTTING,
    "paths.registered": ["register"],  # its record of what it logged
}


def _changed_value(field, default):
    """A valid value other than `default` for a config field, from its type and its allowed range or choices."""
    spec = field.metadata or {}
    if spec.get("choices"):
        return next(choice for choice in spec["choices"] if choice != default)
    if isinstance(default, bool):
        return not default
    if default == "auto" or default is None:
        return spec.get("low") or 1
    if isinstance(default, int):
        return default + 1 if spec.get("high") is None or default + 1 <= spec["high"] else default - 1
    if isinstance(default, float):
        return round(default * 0.5 if default else 0.1, 6)
    return default + "-other"


def _param_cases():
    cases = []
    for section, cls in [("train", TrainConfig), *SECTIONS.items()]:
        for field in dataclasses.fields(cls):
            key = field.name if section == "train" else f"{section}.{field.name}"
            expected = RERUNS_BY_PARAM[key] if key in RERUNS_BY_PARAM else RERUNS_BY_SECTION[section]
            if expected is None:
                continue
            # Another value than the test project's (the dataclass default, or SMALL's where it sets one).
            current = (
                SMALL.get(field.name, field.default)
                if section == "train"
                else SMALL.get(section, {}).get(field.name, field.default)
            )
            value = _changed_value(field, current)
            cases.append(({field.name: value} if section == "train" else {section: {field.name: value}}, expected))
    return cases


PARAM_CASES = _param_cases() + [({"plots": {"cmap": "viridis"}}, PLOTTING)]
CODE_CASES = {
    "src/mnist_pipeline/config.py": ALL,
    "src/mnist_pipeline/errors.py": ALL,
    "src/mnist_pipeline/cli.py": ALL,
    "src/mnist_pipeline/download.py": ALL,
    "src/mnist_pipeline/timing.py": ALL,
    "stages/download.py": ALL,
    "src/mnist_pipeline/data.py": TRAINING,
    "src/mnist_pipeline/model.py": TRAINING,
    "src/mnist_pipeline/training.py": TRAINING,
    "src/mnist_pipeline/checkpoint.py": TRAINING,
    "src/mnist_pipeline/evaluation.py": TRAINING,
    "src/mnist_pipeline/compute/device.py": TRAINING,
    "src/mnist_pipeline/compute/distributed.py": TRAINING,
    "src/mnist_pipeline/seed.py": TRAINING,
    "src/mnist_pipeline/compute/threads.py": TRAINING,
    "src/mnist_pipeline/compute/shards.py": TRAINING,
    "src/mnist_pipeline/progress.py": TRAINING,
    "src/mnist_pipeline/files.py": TRAINING,
    "src/mnist_pipeline/reports.py": TRAINING,
    "src/mnist_pipeline/tracking/store.py": TRAINING,
    "src/mnist_pipeline/tracking/runs.py": TRAINING,
    "src/mnist_pipeline/tracking/inputs.py": TRAINING,
    "src/mnist_pipeline/tracking/system_metrics.py": TRAINING,
    "stages/train.py": TRAINING,
    "stages/evaluate.py": ["evaluate", "plot", "register"],
    "src/mnist_pipeline/records.py": TRAINING,
    "src/mnist_pipeline/compute/kernels.py": TRAINING,
    "src/mnist_pipeline/tracking/lineage.py": TRAINING,
    "src/mnist_pipeline/compute/csrc/reference_net.c": TRAINING,
    "src/mnist_pipeline/plots.py": PLOTTING,
    "stages/plot.py": PLOTTING,
    # The register stage's own code reruns it alone: editing the registry never retrains the model.
    "src/mnist_pipeline/tracking/registry.py": ["register"],
    "src/mnist_pipeline/tracking/results.py": ["register"],
    "stages/register.py": ["register"],
    "src/mnist_pipeline/serving/command.py": [],
    "predict.py": [],  # the predict command: no stage runs it
    "src/mnist_pipeline/serving/framing.py": [],  # predict's framing
    "src/mnist_pipeline/serving/classifier.py": [],  # predict's and serve's model
    # search.py: a search runs the pipeline through `dvc exp run`; no stage imports it.
    "src/mnist_pipeline/search/trials.py": [],
    "src/mnist_pipeline/search/space.py": [],
    "src/mnist_pipeline/search/summary.py": [],
    "search.py": [],
    "search.yaml": [],
    "src/mnist_pipeline/serving/server.py": [],  # predict.py --serve: the page and POST /predict
    # Each package's __init__.py runs before any module of it: every stage runs the top one.
    "src/mnist_pipeline/__init__.py": ALL,
    "src/mnist_pipeline/compute/__init__.py": TRAINING,
    "src/mnist_pipeline/tracking/__init__.py": TRAINING,
    "src/mnist_pipeline/serving/__init__.py": [],
    "src/mnist_pipeline/search/__init__.py": [],
}


@pytest.fixture(scope="module")
def project(prepared_project, tmp_path_factory):
    project = copy_project(prepared_project, tmp_path_factory.mktemp("reruns"))
    assert run(project, "dvc", "status").stdout.strip() == "Data and pipelines are up to date."
    return project


def changed_stages(project) -> set[str]:
    """What `dvc status` says changed, asked of DVC in this process (its Python API; a command costs a second more)."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        return {name.split(":")[-1] for name in repo.status()}


@pytest.mark.e2e
@requires_mnist_mirror()
@pytest.mark.parametrize("change, expected", PARAM_CASES, ids=[json.dumps(c) for c, _ in PARAM_CASES])
def test_a_param_change_reruns_exactly(project, change, expected):
    update_params(project, change)
    try:
        assert reruns(changed_stages(project)) == expected
    finally:
        run(project, "git", "checkout", "params.yaml")


@pytest.mark.e2e
@requires_mnist_mirror()
@pytest.mark.parametrize("source, expected", CODE_CASES.items(), ids=list(CODE_CASES))
def test_a_code_change_reruns_exactly(project, source, expected):
    path = project / source
    original = path.read_text()
    path.write_text(original + "\n# changed\n")
    try:
        assert reruns(changed_stages(project)) == expected
    finally:
        path.write_text(original)


def test_every_module_is_in_the_table():
    modules = {str(p.relative_to(REPO_ROOT)) for p in PACKAGE.rglob("*.py")}
    assert modules <= set(CODE_CASES)
