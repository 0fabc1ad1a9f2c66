import numpy as np
import pytest
import torch

from mnist_pipeline.data import load_split, load_training, normalize, read_idx
from mnist_pipeline.download import MNIST_FILES, md5sum
from mnist_pipeline.errors import DataError

from conftest import MNIST_MIRROR, requires_mnist_mirror, write_idx


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


def test_load_split_normalises_and_limits(tiny_mnist):
    split = load_split(tiny_mnist, train=True, mean=0.5, std=0.25, limit=7)
    assert split.images.shape == (7, 1, 28, 28) and split.images.dtype == torch.float32
    assert split.labels.shape == (7,) and split.labels.dtype == torch.int64
    raw = read_idx(tiny_mnist / "train-images-idx3-ubyte.gz", 2051)[:7]
    expected = (torch.from_numpy(raw.astype(np.float32)) / 255 - 0.5) / 0.25
    assert torch.equal(split.images[:, 0], expected)


def test_validation_images_are_the_training_split_s_last_and_never_trained_on(tiny_mnist):
    whole = load_split(tiny_mnist, train=True, mean=0.5, std=0.25)
    train, held_out = load_training(tiny_mnist, mean=0.5, std=0.25, validation=6)
    assert torch.equal(train.images, whole.images[:14]) and torch.equal(held_out.images, whole.images[14:])
    assert torch.equal(held_out.labels, whole.labels[14:])
    limited, held_out_again = load_training(tiny_mnist, mean=0.5, std=0.25, limit=5, validation=6)
    assert torch.equal(limited.images, whole.images[:5]) and torch.equal(held_out_again.images, held_out.images)
    plain, none = load_training(tiny_mnist, mean=0.5, std=0.25, limit=7)
    assert none is None and torch.equal(plain.images, whole.images[:7])  # nothing held out: as before


def test_normalize_in_place_gives_the_bits_of_the_plain_formula_and_leaves_its_input_alone():
    pixels = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    floats = pixels.to(torch.float32)
    assert torch.equal(normalize(pixels, 0.1307, 0.3081), (pixels.to(torch.float32) / 255.0 - 0.1307) / 0.3081)
    assert torch.equal(normalize(floats, 0.1307, 0.3081), normalize(pixels, 0.1307, 0.3081))
    assert torch.equal(floats, pixels.to(torch.float32))  # a float input is copied, not changed


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
    assert {name: md5sum(MNIST_MIRROR / name) for name in MNIST_FILES} == MNIST_FILES
    train = load_split(MNIST_MIRROR, train=True, mean=0.0, std=1.0)
    test = load_split(MNIST_MIRROR, train=False, mean=0.0, std=1.0)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
