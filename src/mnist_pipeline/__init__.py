"""MNIST CNN pipeline: the library behind the DVC stages in `stages/`."""

import os

# OpenMP threads that finish early sleep instead of spinning on a core: beside another training
# (a `dvc queue start -j 2`) or any busy process, spinning threads slowed a training 4.5x where it
# lost half the CPU (issue 17; benchmarks/sweep.py measures both policies). OpenMP reads this once,
# when torch loads it, so it is set here: every stage imports this package before torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
