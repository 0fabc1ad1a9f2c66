import hashlib
import os

import numpy as np
import pytest
import torch

from conftest import MNIST_MIRROR, requires_mnist_mirror, write_idx
from mnist_pipeline import data
from mnist_pipeline.data import DataError, download_mnist, load_split, md5sum, normalize, read_idx


def test_read_idx_parses_known_bytes(tmp_path):
    # magic 2051, 2 images of 2x3, then the pixels: written by hand, not by write_idx
    raw = bytes.fromhex("00000803 00000002 00000002 00000003") + bytes(range(12))
    path = tmp_path / "images.idx"
    path.write_bytes(raw)
    array = read_idx(path, 2051)
    assert array.shape == (2, 2, 3)
    assert array[1, 1, 2] == 11 and array.dtype == np.uint8


def test_read_idx_reads_gzip(tmp_path):
    labels = np.array([5, 0, 4, 1, 9], dtype=np.uint8)
    path = write_idx(tmp_path / "labels.gz", labels, 2049)
    assert read_idx(path, 2049).tolist() == [5, 0, 4, 1, 9]


def test_read_idx_rejects_wrong_magic(tmp_path):
    path = write_idx(tmp_path / "labels.gz", np.zeros(3), 2049)
    with pytest.raises(DataError, match="IDX magic number 2049, expected 2051"):
        read_idx(path, 2051)


def test_read_idx_rejects_truncated_payload(tmp_path):
    path = tmp_path / "images.idx"
    path.write_bytes(bytes.fromhex("00000803 00000002 0000001c 0000001c") + bytes(100))
    with pytest.raises(DataError, match=r"header says \(2, 28, 28\) = 1568 bytes, file holds 100"):
        read_idx(path, 2051)


def test_md5sum_matches_a_known_digest(tmp_path):
    path = tmp_path / "abc"
    path.write_bytes(b"abc")
    assert md5sum(path) == "900150983cd24fb0d6963f7d28e17f72"


def _expect_tiny_md5s(monkeypatch, mirror):
    monkeypatch.setattr(data, "MNIST_FILES", {name: md5sum(mirror / name) for name in data.MNIST_FILES})


@pytest.mark.parametrize("as_url", [False, True])
def test_download_from_a_local_mirror(tiny_mnist, tmp_path, monkeypatch, as_url):
    _expect_tiny_md5s(monkeypatch, tiny_mnist)
    mirror = tiny_mnist.as_uri() if as_url else str(tiny_mnist)
    written = download_mnist(tmp_path / "out", mirror=mirror)
    assert [p.name for p in written] == list(data.MNIST_FILES)
    assert all((tmp_path / "out" / n).read_bytes() == (tiny_mnist / n).read_bytes() for n in data.MNIST_FILES)
    assert sorted(os.listdir(tmp_path / "out")) == sorted(data.MNIST_FILES)  # no temporary files left


def test_download_reads_the_mirror_from_the_environment(tiny_mnist, tmp_path, monkeypatch):
    _expect_tiny_md5s(monkeypatch, tiny_mnist)
    monkeypatch.setenv("MNIST_MIRROR", str(tiny_mnist))
    assert len(download_mnist(tmp_path / "out")) == 4


def test_md5_mismatch_names_file_and_both_sums_and_leaves_nothing(tiny_mnist, tmp_path, monkeypatch):
    _expect_tiny_md5s(monkeypatch, tiny_mnist)
    name = "t10k-images-idx3-ubyte.gz"
    good_md5 = data.MNIST_FILES[name]
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


def test_load_split_normalises_and_limits(tiny_mnist):
    split = load_split(tiny_mnist, train=True, mean=0.5, std=0.25, limit=7)
    assert split.images.shape == (7, 1, 28, 28) and split.images.dtype == torch.float32
    assert split.labels.shape == (7,) and split.labels.dtype == torch.int64
    raw = read_idx(tiny_mnist / "train-images-idx3-ubyte.gz", 2051)[:7]
    expected = (torch.from_numpy(raw.astype(np.float32)) / 255 - 0.5) / 0.25
    assert torch.equal(split.images[:, 0], expected)


def test_normalize_matches_torchvision_transforms():
    # torchvision is pinned in requirements.txt: a missing one is a broken install, not a reason to skip.
    from PIL import Image
    from torchvision import transforms as torchvision_transforms

    pixels = torch.randint(0, 256, (28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pipeline = torchvision_transforms.Compose(
        [torchvision_transforms.ToTensor(), torchvision_transforms.Normalize((0.1307,), (0.3081,))]
    )
    reference = pipeline(Image.fromarray(pixels.numpy(), mode="L"))
    assert torch.allclose(normalize(pixels.unsqueeze(0), 0.1307, 0.3081), reference, atol=1e-6)


@requires_mnist_mirror()
def test_the_local_mirror_holds_the_published_files():
    assert {name: md5sum(MNIST_MIRROR / name) for name in data.MNIST_FILES} == data.MNIST_FILES
    train = load_split(MNIST_MIRROR, train=True, mean=0.0, std=1.0)
    test = load_split(MNIST_MIRROR, train=False, mean=0.0, std=1.0)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


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
    monkeypatch.setattr(data, "OFFICIAL_MIRRORS", (http_mirror + "missing/", http_mirror))
    assert len(download_mnist(tmp_path / "out", mirror="")) == 4


def test_no_network_and_no_mirror_is_one_line_naming_the_way_out(tmp_path, monkeypatch):
    import socket

    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts connections, never answers: only the timeout ends the wait
    monkeypatch.setattr(data, "DOWNLOAD_TIMEOUT_S", 0.5)
    monkeypatch.setattr(data, "OFFICIAL_MIRRORS", (
        f"http://127.0.0.1:{refusing.getsockname()[1]}/", f"http://127.0.0.1:{silent.getsockname()[1]}/",
    ))
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
