"""The networks, built by name from their config; no I/O here."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

import torch
from torch import nn

from mnist_pipeline.data import normalize


@dataclass(frozen=True)
class ModelConfig:
    """Which network, and its shape. The defaults are the tutorial's network.

    `conv1_channels`, `conv2_channels`, `kernel_size` and `pool` shape the
    reference; `widths` gives the channels of each 3x3 conv block of the
    compact and wide networks (empty: the architecture's own widths).
    """

    architecture: str = "reference"
    image_size: int = 28
    in_channels: int = 1
    num_classes: int = 10
    conv1_channels: int = 10
    conv2_channels: int = 20
    kernel_size: int = 5
    pool: int = 2
    widths: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for the checkpoint (which stores lists, not tuples)."""
        return {**asdict(self), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """The inverse of to_dict; checkpoints written before `architecture` existed hold the reference."""
        return cls(**{**data, "widths": tuple(data.get("widths", ()))})


def feature_size(config: ModelConfig) -> int:
    """Length of the reference's flattened features after its two conv + pool blocks (320 for the defaults)."""
    side = config.image_size
    for _ in range(2):
        side = (side - config.kernel_size + 1) // config.pool
    return config.conv2_channels * side * side


def uniform_init(shape: tuple[int, ...], bound: float) -> torch.Tensor:
    """U(-bound, bound) float32 values from torch's global generator, the same bits on any CPU.

    torch's own uniform_ rounds `u * (high - low) + low` as one fused multiply-add on CPUs that have one and
    as two operations elsewhere, so the same seed gives other initial weights on another instruction set.
    Here each value is 24 random bits (an integer draw, exact everywhere) scaled in double precision by two
    correctly rounded operations, then rounded once to float32.
    """
    bits = torch.randint(0, 2**24, shape, dtype=torch.int64)
    return (bits.to(torch.float64) * (2 * bound / 2**24) - bound).to(torch.float32)


class ReferenceCNN(nn.Module):
    """Conv(1,10,5) -> MaxPool(2) -> ReLU -> Conv(10,20,5) -> MaxPool(2) -> ReLU -> Linear(320,10).

    Initialised as torch initialises these layers (weights and biases uniform in +-1/sqrt(fan_in)), from
    the same seeded generator, but with draws that give the same bits on every CPU (uniform_init).
    """

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.conv1 = nn.Conv2d(config.in_channels, config.conv1_channels, kernel_size=config.kernel_size)
        self.conv2 = nn.Conv2d(config.conv1_channels, config.conv2_channels, kernel_size=config.kernel_size)
        self.pool = nn.MaxPool2d(config.pool)
        self.fc = nn.Linear(feature_size(config), config.num_classes)
        with torch.no_grad():
            for layer in (self.conv1, self.conv2, self.fc):
                bound = 1 / math.sqrt(layer.weight[0].numel())  # fan_in: the inputs of one output
                layer.weight.copy_(uniform_init(tuple(layer.weight.shape), bound))
                assert layer.bias is not None  # built with a bias (the default)
                layer.bias.copy_(uniform_init(tuple(layer.bias.shape), bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (N, 1, 28, 28) -> (N, 10, 24, 24)
        x = self.pool(x)  # -> (N, 10, 12, 12)
        x = torch.relu(x)
        x = self.conv2(x)  # -> (N, 20, 8, 8)
        x = self.pool(x)  # -> (N, 20, 4, 4)
        x = torch.relu(x)
        x = torch.flatten(x, 1)  # (N, 20, 4, 4) -> (N, 320)
        return self.fc(x)  # -> (N, 10) logits


class CompactCNN(nn.Module):
    """Three stages of unpadded 3x3 conv -> batch norm -> ReLU, then a linear head.

    The first conv has stride 2 and the middle stage max-pools right after its
    conv, before batch norm and ReLU (as fast-training CNNs such as airbench
    do), so the costly layers run on few pixels: 28 -> 13 -> 11 -> 5 -> 3. On a
    2-core CPU this trained at about 1.4x the images per second of a pooled
    first stage, for the same accuracy after two epochs (a one-off measurement,
    not kept: docs/performance.md). Widths (16, 32, 64) by
    default: 29k parameters, 0.75M multiply-adds per image (the reference: 0.47M).
    """

    default_widths = (16, 32, 64)
    strided_stem = True  # stage 1 halves the image by its stride (else: conv, then 2x2 max pool)

    def __init__(self, config: ModelConfig):
        super().__init__()
        widths = config.widths or self.default_widths
        channels = (config.in_channels, *widths)
        self.stages = nn.ModuleList()
        side = config.image_size
        for stage, (c_in, c_out) in enumerate(pairwise(channels)):
            stride = 2 if stage == 0 and self.strided_stem else 1
            pool = stage < len(widths) - 1 and stride == 1  # every stage halves the image but the last
            self.stages.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, bias=False),
                    *([nn.MaxPool2d(2)] if pool else []),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                )
            )
            side = (side - 3) // stride + 1
            side = side // 2 if pool else side
        self.fc = nn.Linear(widths[-1] * side * side, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)  # (N, 1, 28, 28) -> (N, 16, 13, 13) -> (N, 32, 5, 5) -> (N, 64, 3, 3)
        x = torch.flatten(x, 1)  # (N, 64, 3, 3) -> (N, 576)
        return self.fc(x)  # -> (N, 10) logits


class SeededDropout(nn.Dropout):
    """nn.Dropout, except that it draws from its own generator once given one.

    Shards of a batch run side by side on several threads (mnist_pipeline.compute.shards); drawing from
    torch's one default generator, they would take their random numbers in whichever order the
    threads happen to run. With a generator each (seeded per step), the draws are the same every run.
    """

    generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.generator is None or not self.training or self.p == 0:
            return super().forward(x)
        keep = torch.empty_like(x).bernoulli_(1 - self.p, generator=self.generator)
        return x * keep / (1 - self.p)


class WideCNN(CompactCNN):
    """The compact network at twice the widths (32, 64, 128), a pooled first stage, dropout before the head.

    About 4x the compact network's arithmetic (3.1M multiply-adds per image,
    0.1M parameters): the network of the `best` recipe, which adds
    augmentation and a longer one-cycle schedule. Its first stage convolves
    the full 28x28 image and then pools (28 -> 26 -> 13), which costs more than
    a strided conv but sees every position.
    """

    default_widths = (32, 64, 128)
    strided_stem = False

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.dropout = SeededDropout(0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)  # (N, 1, 28, 28) -> (N, 32, 13, 13) -> (N, 64, 5, 5) -> (N, 128, 3, 3)
        x = torch.flatten(x, 1)  # (N, 128, 3, 3) -> (N, 1152)
        x = self.dropout(x)
        return self.fc(x)  # -> (N, 10) logits


ARCHITECTURES: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "reference": ReferenceCNN,
    "compact": CompactCNN,
    "wide": WideCNN,
}


def build_model(config: ModelConfig) -> nn.Module:
    """The network `config.architecture` names, shaped by `config`."""
    return ARCHITECTURES[config.architecture](config)


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters of `model`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def served_copy(network: nn.Module, config: ModelConfig, mean: float, std: float) -> DigitClassifier:
    """A DigitClassifier of a fresh `config` network holding `network`'s weights, in eval mode (dropout off,
    batch norm frozen): what MLflow logs. Fresh, because a trained network may hold its weights as views
    of the project's kernels' block, or in channels-last layout."""
    fresh = build_model(config)
    fresh.load_state_dict(network.state_dict())
    return DigitClassifier(fresh, mean, std).eval()


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
