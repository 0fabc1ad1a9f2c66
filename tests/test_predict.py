import numpy as np
import pytest
from PIL import Image

from mnist_pipeline.errors import PipelineError
from mnist_pipeline.predict import load_png


def test_an_mnist_style_png_is_read_as_is(tmp_path):
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[5:20, 12:15] = 255  # a light "1" on black
    Image.fromarray(pixels, mode="L").save(tmp_path / "one.png")
    assert np.array_equal(load_png(tmp_path / "one.png"), pixels)


def test_a_dark_digit_on_white_is_inverted_and_resized(tmp_path):
    drawing = np.full((56, 56), 255, dtype=np.uint8)
    drawing[10:46, 24:30] = 0  # a black stroke on white, twice MNIST's size
    Image.fromarray(drawing, mode="L").save(tmp_path / "scan.png")
    pixels = load_png(tmp_path / "scan.png")
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
    assert pixels[14, 13] > 200 and pixels[2, 2] < 30  # the stroke is now light, the background dark


def test_missing_and_unreadable_files_are_one_line_errors(tmp_path):
    with pytest.raises(PipelineError, match=r"nope.png: no such file$"):
        load_png(tmp_path / "nope.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(PipelineError, match=r"text.png: not a readable image"):
        load_png(tmp_path / "text.png")
