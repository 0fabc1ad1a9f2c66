"""lineage.py: the data's MD5 as dvc.lock records it, the fallback computed from the files, the run's way back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mnist_pipeline.tracking import lineage

from conftest import MNIST_MIRROR, REPO_ROOT, requires_mnist_mirror


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    """A project folder (the working directory) with data/mnist holding two small files."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"train images")
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(b"test images")
    return folder


def write_lock(path: Path, stages: dict) -> Path:
    path.write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))
    return path


@requires_mnist_mirror()
def test_folder_md5_is_the_md5_dvc_recorded_for_the_mnist_files(tmp_path):
    # The reference: DVC's own MD5 of data/mnist in this repository's dvc.lock, against the four original files.
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ):
        (folder / name).symlink_to(MNIST_MIRROR / name)
    recorded, _ = lineage.locked_md5(REPO_ROOT / "dvc.lock", "data/mnist")
    assert recorded and lineage.folder_md5(folder) == recorded


def test_the_digest_comes_from_the_download_stage_in_dvc_lock(data_dir, tmp_path):
    write_lock(tmp_path / "dvc.lock", {"download": {"outs": [{"path": "data/mnist", "md5": "abc.dir"}]}})
    digest = lineage.data_digest("data/mnist")
    assert digest == lineage.DataDigest("abc.dir", "dvc.lock", None)


@pytest.mark.parametrize(
    "stages",
    [
        {},  # a lock without the download stage (only train ran, by hand)
        {"train": {"outs": [{"path": "models/model.pt", "md5": "def"}]}},
        {"download": {"outs": [{"path": "data/other", "md5": "abc.dir"}]}},  # data.dir changed since
    ],
)
def test_without_the_download_stage_the_digest_is_computed_from_the_files_with_one_line(data_dir, tmp_path, stages):
    write_lock(tmp_path / "dvc.lock", stages)
    digest = lineage.data_digest("data/mnist")
    assert digest.md5 == lineage.folder_md5(data_dir) and digest.origin == "files"
    assert "\n" not in digest.note and digest.note.endswith("computed from the files in data/mnist")


def test_without_dvc_lock_or_with_a_broken_one_the_digest_is_computed(data_dir, tmp_path):
    assert lineage.data_digest("data/mnist").note.startswith("no dvc.lock:")
    (tmp_path / "dvc.lock").write_text("stages: [unclosed")
    assert lineage.data_digest("data/mnist").note.startswith("dvc.lock is unreadable (")


def test_a_download_stage_run_by_hand_says_so_from_the_stage_without_a_traceback(data_dir, tmp_path):
    # The train stage prints the note as one line; here through the same call a stage makes, in a subprocess.
    write_lock(tmp_path / "dvc.lock", {"train": {}})
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from mnist_pipeline.tracking.lineage import data_digest; "
            "d = data_digest('data/mnist'); print(d.origin); print(d.note)",
        ],
        capture_output=True,
        text=True,
        env={},
        cwd=tmp_path,
    )
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.splitlines() == [
        "files",
        "dvc.lock has no download stage: the data's MD5 is computed from the files in data/mnist",
    ]


def test_split_files_name_each_context_s_files(data_dir):
    assert lineage.split_files("data/mnist") == {
        "training": ("train-images-idx3-ubyte.gz",),
        "test": ("t10k-images-idx3-ubyte.gz",),
    }


def test_the_command_that_brings_a_run_back():
    assert lineage.reproduce_command("lucky-lark", "abc123") == "dvc exp apply lucky-lark"
    assert lineage.reproduce_command(None, "abc123") == "git checkout abc123 && (dvc pull || dvc repro)"
    assert lineage.reproduce_command(None, None) == "dvc repro"
