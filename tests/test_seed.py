import random

import numpy as np
import torch

from mnist_pipeline.seed import set_seed


def test_one_seed_fixes_every_generator():
    def draw():
        generator = set_seed(123)
        return random.random(), np.random.rand(), torch.rand(1).item(), torch.randperm(10, generator=generator).tolist()

    assert draw() == draw()
    first = draw()

    def draw_other():
        generator = set_seed(124)
        return random.random(), np.random.rand(), torch.rand(1).item(), torch.randperm(10, generator=generator).tolist()

    assert all(a != b for a, b in zip(first, draw_other(), strict=True))  # every generator follows the seed
