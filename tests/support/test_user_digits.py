import numpy as np
from PIL import Image

from user_digits import write_user_digits


def digits_and_labels(count=30):
    rng = np.random.default_rng(0)
    digits = np.zeros((count, 28, 28), dtype=np.uint8)
    for digit in digits:
        top, left = rng.integers(4, 8, 2)
        digit[top : top + 20, left + 8 : left + 12] = 255  # a light "1", placed as MNIST places digits
    return digits, np.arange(count) % 10


def test_the_same_seed_writes_the_same_files(tmp_path):
    digits, labels = digits_and_labels()
    first = write_user_digits(digits, labels, tmp_path / "a", seed=3, count=12, max_side=256)
    second = write_user_digits(digits, labels, tmp_path / "b", seed=3, count=12, max_side=256)
    assert [item.path.name for item in first] == [item.path.name for item in second]
    assert all(a.path.read_bytes() == b.path.read_bytes() for a, b in zip(first, second, strict=True))
    other = write_user_digits(digits, labels, tmp_path / "c", seed=4, count=12, max_side=256)
    assert [a.path.read_bytes() for a in first] != [c.path.read_bytes() for c in other]


def test_the_set_holds_every_kind_of_image_with_its_label(tmp_path):
    digits, labels = digits_and_labels()
    items = write_user_digits(digits, labels, tmp_path, seed=0, count=30, max_side=256)
    kinds = {kind for item in items for kind in item.kinds}
    assert {"inverted", "rgba", "jpeg", "noisy", "specks", "colour"} <= kinds
    for item in items:
        image = Image.open(item.path)
        extension = "jpg" if image.format == "JPEG" else "png"
        assert item.label == labels[item.mnist_index] and item.path.name.endswith(f"_{item.label}.{extension}")
        assert max(image.size) <= 256 and min(image.size) > 28  # larger than MNIST's frame
        assert (image.mode == "RGBA") == ("rgba" in item.kinds)
        assert (image.format == "JPEG") == ("jpeg" in item.kinds)
    turns = [item.turn_degrees for item in items]
    assert max(abs(turn) for turn in turns) <= 10 and min(turns) < -1 and max(turns) > 1
