"""The README stays a short guide, and the README and docs/ point only at things that exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

import recipes
import train_speed
from conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target)
MENTIONED_PATH = re.compile(r"(?<![\w/.])((?:benchmarks|src|stages|tests|docs)/[\w./*-]*\w)")  # `tests/test_*.py` too
# Right after a path no longer in the tree: the commit that still holds it (a retired result file).
RETIRED = re.compile(r"`? \(?(?:retired; )?as committed in ([0-9a-f]{7,40})\b")


def section(text: str, heading: str) -> str:
    """The text under `## heading`, up to the next heading of that level."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no '## {heading}' section"
    return match.group(1)


def anchor(heading: str) -> str:
    """The fragment GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)  # no headings inside code blocks
    return {anchor(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def test_the_readme_is_a_guide_of_at_most_300_lines():
    lines = README.read_text().count("\n")
    assert lines <= 300, f"README.md has {lines} lines; move details to docs/"


def test_the_quick_start_is_the_two_commands():
    commands = [line.split("#")[0].strip() for line in section(README.read_text(), "Quick start").splitlines()]
    assert "./setup.sh" in commands
    assert ".venv/bin/python -m pytest" in commands


def test_the_anchor_of_a_heading_is_githubs():
    assert anchor("Sharing: a team MLflow server and a DVC remote") == "sharing-a-team-mlflow-server-and-a-dvc-remote"
    assert anchor("Recipes, measured") == "recipes-measured"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_points_to_an_existing_file_and_heading(page):
    targets = [t for t in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:", t)]  # not http:, mailto:
    assert page != README or any(t.startswith("docs/") for t in targets)  # the README leads to docs/
    for target in targets:
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: link to {target}: no such file"
        if fragment:
            assert fragment in anchors(linked), f"{page.name}: link to {target}: no such heading"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_file_the_text_names_exists(page):
    """A path exists in the tree, or the text says which commit holds it (a retired result) and that commit does."""
    text = page.read_text()
    for found in MENTIONED_PATH.finditer(text):
        path = found.group(1)
        if list(REPO_ROOT.glob(path)):
            continue
        retired = RETIRED.match(text, found.end())
        assert retired, f"{page.name} names {path}, which does not exist (nor says 'as committed in <commit>')"
        shown = subprocess.run(["git", "cat-file", "-e", f"{retired.group(1)}:{path}"], cwd=REPO_ROOT, check=False)
        assert shown.returncode == 0, (
            f"{page.name} names {path} as committed in {retired.group(1)}, which has no such file"
        )


def test_each_block_a_benchmark_rewrites_has_its_two_markers():
    performance = (REPO_ROOT / "docs" / "performance.md").read_text()
    import common
    import sweep

    assert common.DOCS.name == "performance.md"
    for mark in (
        train_speed.SPEED_MARK,
        train_speed.GPU_SPEED_MARK,
        recipes.RESULTS_MARK,
        "<!-- overhead-results -->",
        sweep.MARK,
    ):
        assert performance.count(mark) == 2, mark
    readme = README.read_text()
    assert readme.count(recipes.RECIPES_MARK) == 2  # the recipes people run stay in the README
    assert set(recipes.readme_recipes(readme)) == {"fast", "best"}
    assert recipes.recipe_params(recipes.readme_recipes(readme)["best"])["augment"]["rotate"] > 0  # the best augments


def test_the_readmes_recipe_figures_are_the_committed_measurement_of_those_very_commands():
    """The accuracies in the recipes block come from benchmarks/results/recipes.json, made by recipes.py from the
    block's own `dvc exp run` lines: the same commands, and the same mean and range over the seeds."""
    import json
    import statistics

    readme = README.read_text()
    measured = json.loads((REPO_ROOT / "benchmarks" / "results" / "recipes.json").read_text())
    block = readme.split(recipes.RECIPES_MARK)[1]
    for name, assignments in recipes.readme_recipes(readme).items():
        assert measured[name]["assignments"] == assignments, name
        accuracies = [100 * run["test_accuracy"] for run in measured[name]["runs"]]
        seeds = [run["seed"] for run in measured[name]["runs"]]
        claim = (
            f"# {name}: {statistics.mean(accuracies):.2f}% mean ({min(accuracies):.2f}-{max(accuracies):.2f}) "
            f"over seeds {min(seeds)}-{max(seeds)}"
        )
        assert claim in block, claim
