"""Sharing through a DVC remote and a git remote, as the README shows a team: push, clone, pull, experiments.

A local folder stands in for the S3 or SSH remote (same commands, no extra
package). Project A runs the pipeline and pushes; B is a real `git clone` of
the same origin that gets everything back with `dvc pull`. Steps of one story,
in file order.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from conftest import requires_mnist_mirror
from dvc_project import copy_project, environment, run, stages_run

pytestmark = [pytest.mark.e2e, requires_mnist_mirror()]


def cached_outputs(project: Path) -> dict[str, str]:
    """MD5 of every output DVC caches (the data, the checkpoint, the PNGs): what travels through the remote."""
    files = [
        *sorted((project / "data" / "mnist").glob("*.gz")),
        project / "models" / "model.pt",
        *sorted((project / "plots").glob("*.png")),
    ]
    return {str(f.relative_to(project)): hashlib.md5(f.read_bytes()).hexdigest() for f in files}


def in_remote(remote: Path, md5: str) -> bool:
    """Whether the DVC remote holds the object with this MD5 (DVC 3 lays them out as files/md5/ab/cdef...)."""
    return (remote / "files" / "md5" / md5[:2] / md5[2:]).is_file()


@pytest.fixture(scope="module")
def team(prepared_project, tmp_path_factory):
    """A with a default DVC remote committed in .dvc/config, after `dvc repro`, a commit, `dvc push` and `git push`.

    A is a copy of the session's project after its `dvc repro` (conftest); the remote does not change
    what the stages produce, so adding it afterwards leaves the pipeline up to date.
    """
    root = tmp_path_factory.mktemp("team")
    origin, remote, a = root / "origin.git", root / "dvc-remote", root / "a"
    run(root, "git", "init", "-q", "--bare", "--initial-branch=main", str(origin))
    copy_project(prepared_project, a)
    run(a, "dvc", "remote", "add", "-d", "shared", str(remote))
    run(a, "git", "remote", "add", "origin", str(origin))
    # dvc.lock and the uncached results (metrics/*.json, history.csv, ...) travel through git.
    run(a, "git", "add", "-A")
    run(a, "git", "commit", "-qm", "first run; the team's DVC remote")
    push = run(a, "dvc", "push")
    run(a, "git", "push", "-q", "origin", "HEAD:main")
    return {
        "root": root,
        "origin": origin,
        "remote": remote,
        "a": a,
        "push": push,
        "a_outputs": cached_outputs(a),
        "b": root / "b",
    }


def test_push_uploads_every_cached_output_to_the_committed_default_remote(team):
    a, remote = team["a"], team["remote"]
    assert "[core]\n    remote = shared\n" in run(a, "git", "show", "HEAD:.dvc/config").stdout
    assert run(a, "dvc", "status", "--cloud").stdout.strip() == "Cache and remote 'shared' are in sync."
    assert in_remote(remote, team["a_outputs"]["models/model.pt"])
    assert in_remote(remote, team["a_outputs"]["data/mnist/train-images-idx3-ubyte.gz"])


def test_a_fresh_clone_pulls_byte_identical_outputs_and_reruns_nothing(team):
    b = team["b"]
    run(team["root"], "git", "clone", "-q", str(team["origin"]), str(b))
    assert not (b / "models" / "model.pt").exists()  # git alone does not carry the cached outputs
    # No MNIST mirror in B: the data can only come from the remote, and a download stage would fail.
    b_env = environment(MNIST_MIRROR=str(team["root"] / "no-mirror-here"))
    run(b, "dvc", "pull", env=b_env)
    assert cached_outputs(b) == team["a_outputs"]
    assert len(team["a_outputs"]) == 4 + 1 + 4  # four MNIST files, the checkpoint, four PNGs
    assert run(b, "dvc", "status", env=b_env).stdout.strip() == "Data and pipelines are up to date."
    again = run(b, "dvc", "repro", env=b_env)
    assert stages_run(again.stdout) == []
    assert not (b / "mlflow.db").exists()  # no training ran


def test_an_experiment_travels_through_exp_push_and_exp_pull(team):
    a, b, remote = team["a"], team["b"], team["remote"]
    experiment = run(a, "dvc", "exp", "run", "-S", "lr=0.05")
    assert stages_run(experiment.stdout) == ["train", "evaluate", "plot", "register"]
    (name,) = run(a, "dvc", "exp", "list", "--name-only").stdout.split()
    exp_checkpoint = (a / "models" / "model.pt").read_bytes()
    exp_md5 = hashlib.md5(exp_checkpoint).hexdigest()
    exp_eval = (a / "metrics" / "eval.json").read_text()
    assert exp_md5 != team["a_outputs"]["models/model.pt"]
    assert not in_remote(remote, exp_md5)

    # `dvc exp push` sends the experiment's git ref to origin and its cached outputs to the default remote.
    run(a, "dvc", "exp", "push", "origin", name)
    assert in_remote(remote, exp_md5)

    b_env = environment(MNIST_MIRROR=str(team["root"] / "no-mirror-here"))
    assert run(b, "dvc", "exp", "list", "--name-only", env=b_env).stdout.split() == []
    run(b, "dvc", "exp", "pull", "origin", name, env=b_env)
    assert run(b, "dvc", "exp", "list", "--name-only", env=b_env).stdout.split() == [name]
    shown = json.loads(run(b, "dvc", "exp", "show", "--json", env=b_env).stdout)
    assert name in [exp["name"] for commit in shown for exp in commit.get("experiments") or []]

    # `dvc exp apply` checks the outputs out itself (DVC 3): no separate `dvc checkout` is needed.
    run(b, "dvc", "exp", "apply", name, env=b_env)
    assert (b / "models" / "model.pt").read_bytes() == exp_checkpoint
    assert (b / "metrics" / "eval.json").read_text() == exp_eval
    assert "lr: 0.05" in (b / "params.yaml").read_text()
    assert run(b, "dvc", "status", env=b_env).stdout.strip() == "Data and pipelines are up to date."
