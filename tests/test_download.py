"""The download stage's library: MD5-verified MNIST files from a local or remote mirror."""

import hashlib
import os
import subprocess
import sys

import pytest

from mnist_pipeline import download
from mnist_pipeline.download import download_mnist, md5sum
from mnist_pipeline.errors import DataError

from conftest import MNIST_MIRROR, REPO_ROOT, requires_mnist_mirror


def test_md5sum_matches_a_known_digest(tmp_path):
    path = tmp_path / "abc"
    path.write_bytes(b"abc")
    assert md5sum(path) == "900150983cd24fb0d6963f7d28e17f72"


def _expect_tiny_md5s(monkeypatch, mirror):
    monkeypatch.setattr(download, "MNIST_FILES", {name: md5sum(mirror / name) for name in download.MNIST_FILES})


@pytest.mark.parametrize("as_url", [False, True])
def test_download_from_a_local_mirror(tiny_mnist, tmp_path, monkeypatch, as_url):
    _expect_tiny_md5s(monkeypatch, tiny_mnist)
    mirror = tiny_mnist.as_uri() if as_url else str(tiny_mnist)
    written = download_mnist(tmp_path / "out", mirror=mirror)
    assert [p.name for p in written] == list(download.MNIST_FILES)
    assert all((tmp_path / "out" / n).read_bytes() == (tiny_mnist / n).read_bytes() for n in download.MNIST_FILES)
    assert sorted(os.listdir(tmp_path / "out")) == sorted(download.MNIST_FILES)  # no temporary files left


def test_download_reads_the_mirror_from_the_environment(tiny_mnist, tmp_path, monkeypatch):
    _expect_tiny_md5s(monkeypatch, tiny_mnist)
    monkeypatch.setenv("MNIST_MIRROR", str(tiny_mnist))
    assert len(download_mnist(tmp_path / "out")) == 4


def test_md5_mismatch_names_file_and_both_sums_and_leaves_nothing(tiny_mnist, tmp_path, monkeypatch):
    _expect_tiny_md5s(monkeypatch, tiny_mnist)
    name = "t10k-images-idx3-ubyte.gz"
    good_md5 = download.MNIST_FILES[name]
    damaged = (tiny_mnist / name).read_bytes()[:-10]
    (tiny_mnist / name).write_bytes(damaged)
    out = tmp_path / "out"
    with pytest.raises(DataError) as caught:
        download_mnist(out, mirror=str(tiny_mnist))
    assert str(caught.value).startswith(
        f"{name}: MD5 mismatch (expected {good_md5}, got {hashlib.md5(damaged).hexdigest()})"
    )
    assert not (out / name).exists()
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no half-written temporary file


def test_missing_mirror_folder_is_one_clear_line(tmp_path):
    with pytest.raises(DataError, match=r"MNIST_MIRROR=.*nope: no such folder"):
        download_mnist(tmp_path / "out", mirror=str(tmp_path / "nope"))


def test_mirror_missing_a_file_says_which_and_where(tiny_mnist, tmp_path):
    (tiny_mnist / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=f"train-labels-idx1-ubyte.gz: not found in {tiny_mnist}"):
        download_mnist(tmp_path / "out", mirror=str(tiny_mnist))


@pytest.fixture
def http_mirror(tiny_mnist):
    """The tiny files served over HTTP on 127.0.0.1, as a remote mirror would."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tiny_mnist))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_over_http(tiny_mnist, http_mirror, tmp_path, monkeypatch):
    _expect_tiny_md5s(monkeypatch, tiny_mnist)
    assert len(download_mnist(tmp_path / "out", mirror=http_mirror)) == 4


def test_a_mirror_that_lacks_the_file_falls_through_to_the_next(tiny_mnist, http_mirror, tmp_path, monkeypatch):
    _expect_tiny_md5s(monkeypatch, tiny_mnist)
    monkeypatch.setattr(download, "OFFICIAL_MIRRORS", (http_mirror + "missing/", http_mirror))
    assert len(download_mnist(tmp_path / "out", mirror="")) == 4


def test_no_network_and_no_mirror_is_one_line_naming_the_way_out(tmp_path, monkeypatch):
    import socket

    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts connections, never answers: only the timeout ends the wait
    monkeypatch.setattr(download, "DOWNLOAD_TIMEOUT_S", 0.5)
    monkeypatch.setattr(
        download,
        "OFFICIAL_MIRRORS",
        (
            f"http://127.0.0.1:{refusing.getsockname()[1]}/",
            f"http://127.0.0.1:{silent.getsockname()[1]}/",
        ),
    )
    monkeypatch.delenv("MNIST_MIRROR", raising=False)
    try:
        with pytest.raises(DataError) as caught:
            download_mnist(tmp_path / "out")
    finally:
        refusing.close()
        silent.close()
    message = str(caught.value)
    assert message.startswith("train-images-idx3-ubyte.gz: no mirror answered (")
    assert "Connection refused" in message and "timed out" in message
    assert message.endswith("offline, set MNIST_MIRROR to a local copy (folder or file:// URL)")
    assert "\n" not in message
    assert not list((tmp_path / "out").iterdir())  # nothing half-downloaded left behind


@requires_mnist_mirror()
def test_the_download_stage_imports_neither_torch_nor_numpy_nor_mlflow(tmp_path):
    """Checking MD5 sums needs none of them; importing them would cost the stage seconds."""
    (tmp_path / "params.yaml").write_text("data:\n  dir: mnist\n")
    # The package first, as in a stage: its quick exit is the first exit handler, so the probe's runs before it.
    probe = (
        "import atexit, runpy, sys, mnist_pipeline.cli; "
        "atexit.register(lambda: print('loaded:', sorted(m for m in ('torch', 'numpy', 'mlflow') if m in sys.modules))); "
        f"runpy.run_path({str(REPO_ROOT / 'stages' / 'download.py')!r}, run_name='__main__')"
    )
    env = {**os.environ, "MNIST_MIRROR": str(MNIST_MIRROR)}
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "download: mnist/t10k-labels-idx1-ubyte.gz (MD5 verified)" in done.stdout
    assert "loaded: []" in done.stdout
