import pytest
import torch

from mnist_pipeline.config import ARCHITECTURES as CONFIG_ARCHITECTURES
from mnist_pipeline.model import (
    ARCHITECTURES,
    CompactCNN,
    DigitClassifier,
    ModelConfig,
    ReferenceCNN,
    WideCNN,
    build_model,
    feature_size,
    parameter_count,
)


def test_feature_size_of_the_reference_is_320():
    assert feature_size(ModelConfig()) == 320


def test_output_shape_and_parameter_count():
    model = build_model(ModelConfig())
    assert isinstance(model, ReferenceCNN)
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    # conv1 10*1*5*5+10, conv2 20*10*5*5+20, fc 320*10+10
    assert sum(p.numel() for p in model.parameters()) == 260 + 5020 + 3210


def test_layers_follow_the_reference():
    model = build_model(ModelConfig())
    assert (model.conv1.in_channels, model.conv1.out_channels, model.conv1.kernel_size) == (1, 10, (5, 5))
    assert (model.conv2.in_channels, model.conv2.out_channels, model.conv2.kernel_size) == (10, 20, (5, 5))
    assert (model.fc.in_features, model.fc.out_features) == (320, 10)


def test_sizes_follow_the_config():
    model = build_model(ModelConfig(conv2_channels=8, num_classes=3))
    assert model.fc.in_features == 8 * 4 * 4
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 3)


def test_digit_classifier_takes_raw_pixels_and_returns_probabilities():
    torch.manual_seed(0)
    network = build_model(ModelConfig())
    classifier = DigitClassifier(network, mean=0.1307, std=0.3081)
    pixels = torch.randint(0, 256, (3, 1, 28, 28)).float()
    probabilities = classifier(pixels)
    assert probabilities.shape == (3, 10)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(3))
    expected = torch.softmax(network((pixels / 255 - 0.1307) / 0.3081), dim=1)
    assert torch.allclose(probabilities, expected)


def _conv_block_params(c_in, c_out):
    return c_in * c_out * 9 + 2 * c_out  # 3x3 conv without bias, batch norm scale and shift


def test_reference_is_the_default_architecture():
    assert ModelConfig().architecture == "reference" and isinstance(build_model(ModelConfig()), ReferenceCNN)


def test_compact_network_shape_and_parameter_count():
    model = build_model(ModelConfig(architecture="compact"))
    assert isinstance(model, CompactCNN)
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    convs = _conv_block_params(1, 16) + _conv_block_params(16, 32) + _conv_block_params(32, 64)
    assert parameter_count(model) == convs + 64 * 3 * 3 * 10 + 10  # 28 -> 26 -> 13 -> 11 -> 5 -> 3 pixels per side
    assert parameter_count(model) <= 100_000  # the bound for a compact network


def test_wide_network_shape_and_parameter_count():
    model = build_model(ModelConfig(architecture="wide"))
    assert isinstance(model, WideCNN)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    convs = _conv_block_params(1, 32) + _conv_block_params(32, 64) + _conv_block_params(64, 128)
    assert parameter_count(model) == convs + 128 * 3 * 3 * 10 + 10
    assert model.dropout.p == 0.25


def test_widths_come_from_the_config():
    model = build_model(ModelConfig(architecture="compact", widths=(4, 8), num_classes=3))
    assert model.fc.in_features == 8 * 11 * 11  # two stages: 28 -> 26 -> 13 -> 11
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 3)


@pytest.mark.parametrize("name", CONFIG_ARCHITECTURES)
def test_every_architecture_params_yaml_allows_is_built_and_classifies(name):
    model = build_model(ModelConfig(architecture=name))
    assert type(model) is ARCHITECTURES[name]
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_model_config_round_trips_through_a_checkpoint_dict():
    config = ModelConfig(architecture="compact", widths=(8, 16, 32))
    assert ModelConfig.from_dict(config.to_dict()) == config
    legacy = {k: v for k, v in ModelConfig().to_dict().items() if k not in ("architecture", "widths")}
    assert ModelConfig.from_dict(legacy) == ModelConfig()  # checkpoints from before there was a choice
