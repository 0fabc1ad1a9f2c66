import numpy as np
import pytest
from PIL import Image

from mnist_pipeline.errors import PipelineError
from mnist_pipeline.predict import main


def test_every_image_is_checked_before_the_model_loads(tmp_path, capsys):
    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[4:24, 12:16] = 255  # a light "1" on black
    Image.fromarray(digit).save(tmp_path / "one.png")
    Image.new("L", (40, 40), 255).save(tmp_path / "digit.png")
    # The checkpoint does not exist: the blank image is what must be reported, before any model is read.
    with pytest.raises(PipelineError) as raised:
        main(["--checkpoint", str(tmp_path / "missing.pt"), str(tmp_path / "one.png"), str(tmp_path / "digit.png")])
    assert str(raised.value) == f"{tmp_path / 'digit.png'}: no digit found (the image is blank)"
    assert capsys.readouterr().out == ""


def test_a_missing_image_is_one_line_before_the_model_loads(tmp_path):
    with pytest.raises(PipelineError, match=r"nope.png: no such file$"):
        main(["--checkpoint", str(tmp_path / "missing.pt"), str(tmp_path / "nope.png")])
