"""The trained model as a function from pixels to probabilities (classifier.py)."""

import warnings

import numpy as np

from conftest import untrained_checkpoint
from mnist_pipeline.classifier import probabilities_from_checkpoint


def test_checkpoint_probabilities_take_read_only_pixels_quietly(tmp_path):
    checkpoint = untrained_checkpoint(tmp_path / "model.pt")
    pixels = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    pixels.flags.writeable = False  # as MNIST's digits are, read with np.frombuffer
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probabilities = probabilities_from_checkpoint(pixels, checkpoint)
    assert probabilities.shape == (3, 10)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
