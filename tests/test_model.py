import torch

from mnist_pipeline.model import DigitClassifier, ModelConfig, ReferenceCNN, build_model, feature_size


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
