import pytest
import torch

from mnist_pipeline.compute.device import resolve_device
from mnist_pipeline.errors import PipelineError


def test_cpu_is_cpu():
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_takes_the_gpu_only_when_there_is_one():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(PipelineError, match="device: got 'cuda', but torch finds no CUDA GPU"):
        resolve_device("cuda")
