"""One seed for everything random in a run."""

from __future__ import annotations

import random

import numpy as np
import torch


def set_seed(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch, and return a CPU generator for data shuffling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    # Shuffling draws from its own generator so that the data order does not
    # depend on how many random numbers weight init happened to consume.
    return torch.Generator().manual_seed(seed)
