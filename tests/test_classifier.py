"""The trained model as a function from pixels to probabilities (classifier.py)."""

import warnings

import numpy as np
import torch

from mnist_pipeline.checkpoint import save_checkpoint
from mnist_pipeline.classifier import probabilities_from_checkpoint
from mnist_pipeline.config import parse_config
from mnist_pipeline.history import EpochResult
from mnist_pipeline.model import ModelConfig, build_model


def test_checkpoint_probabilities_take_read_only_pixels_quietly(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig())
    save_checkpoint(tmp_path / "model.pt", model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                    generator=torch.Generator(), model_config=ModelConfig(),
                    config=parse_config({"epochs": 1}).to_dict(), history=[EpochResult(1, 0.5, 0.4, 0.9)])
    pixels = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    pixels.flags.writeable = False  # as MNIST's digits are, read with np.frombuffer
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probabilities = probabilities_from_checkpoint(pixels, tmp_path / "model.pt")
    assert probabilities.shape == (3, 10)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
