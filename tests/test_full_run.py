"""The reference recipe on all of MNIST: it must match the tutorial's accuracy table within noise."""

import pytest

from conftest import MNIST_MIRROR, REPO_ROOT, requires_mnist_mirror
from mnist_pipeline.config import load_config
from mnist_pipeline.data import load_split
from mnist_pipeline.model import ModelConfig, build_model
from mnist_pipeline.seed import set_seed
from mnist_pipeline.training import make_optimizer, train

# The tutorial's published test accuracy per epoch (%): 97.0, 97.99, 98.13, 98.38, 98.46, 98.58, 98.69, 98.69, 98.49, 98.49


@pytest.mark.full
@requires_mnist_mirror()
def test_default_params_reproduce_the_reference_accuracy():
    config = load_config(REPO_ROOT / "params.yaml")
    assert config.data.max_train_images is None and config.train.epochs == 10
    data = config.data
    train_split = load_split(MNIST_MIRROR, True, data.mean, data.std)
    test_split = load_split(MNIST_MIRROR, False, data.mean, data.std)
    generator = set_seed(config.train.seed)
    model = build_model(ModelConfig())
    history = train(model, make_optimizer(model, config.train), train_split, test_split, config.train, generator)
    accuracies = [round(r.test_accuracy, 4) for r in history]
    print("test accuracy per epoch:", accuracies)
    assert history[0].test_accuracy >= 0.965, accuracies
    assert history[-1].test_accuracy >= 0.984, accuracies
