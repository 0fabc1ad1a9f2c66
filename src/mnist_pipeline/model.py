"""The reference CNN, built from its config; no I/O here."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from mnist_pipeline.data import normalize


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the reference CNN; the defaults are the tutorial's network."""

    image_size: int = 28
    in_channels: int = 1
    conv1_channels: int = 10
    conv2_channels: int = 20
    kernel_size: int = 5
    pool: int = 2
    num_classes: int = 10

    def to_dict(self) -> dict[str, int]:
        """Plain data, for the checkpoint."""
        return asdict(self)


def feature_size(config: ModelConfig) -> int:
    """Length of the flattened features after the two conv + pool blocks (320 for the defaults)."""
    side = config.image_size
    for _ in range(2):
        side = (side - config.kernel_size + 1) // config.pool
    return config.conv2_channels * side * side


class ReferenceCNN(nn.Module):
    """Conv(1,10,5) -> MaxPool(2) -> ReLU -> Conv(10,20,5) -> MaxPool(2) -> ReLU -> Linear(320,10)."""

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.conv1 = nn.Conv2d(config.in_channels, config.conv1_channels, kernel_size=config.kernel_size)
        self.conv2 = nn.Conv2d(config.conv1_channels, config.conv2_channels, kernel_size=config.kernel_size)
        self.pool = nn.MaxPool2d(config.pool)
        self.fc = nn.Linear(feature_size(config), config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (N, 1, 28, 28) -> (N, 10, 24, 24)
        x = self.pool(x)  # -> (N, 10, 12, 12)
        x = torch.relu(x)
        x = self.conv2(x)  # -> (N, 20, 8, 8)
        x = self.pool(x)  # -> (N, 20, 4, 4)
        x = torch.relu(x)
        x = torch.flatten(x, 1)  # (N, 20, 4, 4) -> (N, 320)
        return self.fc(x)  # -> (N, 10) logits


def build_model(config: ModelConfig) -> nn.Module:
    """The network for `config`."""
    return ReferenceCNN(config)


class DigitClassifier(nn.Module):
    """What MLflow serves: raw 0-255 pixels (N, 1, 28, 28) in, class probabilities (N, 10) out.

    Normalisation lives inside, so callers of the logged model never need to know
    the training set's mean and std.
    """

    def __init__(self, network: nn.Module, mean: float, std: float):
        super().__init__()
        self.network = network
        self.mean = mean
        self.std = std

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = normalize(pixels, self.mean, self.std)
        return torch.softmax(self.network(x), dim=1)
