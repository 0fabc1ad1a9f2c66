"""The reference CNN's first block (conv1 -> max pool -> ReLU) as one fused CPU kernel, and when training uses it.

`kernels: auto` (the default) trains the reference network on a CPU with
this block replaced by csrc/reference_block1.c, built on first use with the
machine's C compiler (`cc`, or $CC) and cached; everything else stays torch's.
It computes what torch's layers compute, up to float rounding, and makes a
training epoch about 1.3x faster on a 2-core CPU (benchmarks/fused_block.py, whose
run is benchmarks/results/fused_block.json).
Where it does not apply (another network, a GPU, bf16, torch.compile, several
processes), or cannot be built, training uses torch's kernels and the train
stage says why in one line. `kernels: torch` uses torch's everywhere.
The checkpoint and the logged model are the plain torch network either way.
Imports torch only.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from mnist_pipeline.errors import PipelineError
from mnist_pipeline.model import ReferenceCNN

SOURCE = Path(__file__).with_name("csrc") / "reference_block1.c"
CFLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=gnu11")
IMAGE_SIDE, KERNEL, CHANNELS, CONV_SIDE, POOLED = 28, 5, 10, 24, 12  # the shapes the C kernel is written for
LANES, PART = 8, 260  # images per vector; one group's weight and bias gradient (10 * 25 + 10)


class KernelBuildError(PipelineError):
    """The fused kernel could not be compiled or loaded here."""


def cache_dir() -> Path:
    """Where built kernels are kept: $XDG_CACHE_HOME/mnist-pipeline (~/.cache/mnist-pipeline)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mnist-pipeline"


def _machine_signature() -> str:
    """What -march=native compiles for: this CPU's model and instruction-set flags."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text(errors="replace").splitlines()
        return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))
    return platform.machine() + platform.processor()


def build(source: Path = SOURCE, directory: Optional[Path] = None, compiler: Optional[str] = None) -> Path:
    """Compile `source` into a shared library under `directory` (once per source, compiler and CPU); its path.

    The file name hashes all three, so an edited kernel or another machine
    sharing the home folder gets its own build; the library is written under a
    temporary name and renamed, so parallel runs (`dvc queue`) never load half a file.
    """
    compiler = compiler or os.environ.get("CC") or "cc"
    path = shutil.which(compiler)
    if path is None:
        raise KernelBuildError(f"no C compiler: `{compiler}` is not on PATH; install gcc, or set kernels: torch")
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([source.read_text(), path, version, *CFLAGS, _machine_signature()]).encode())
    directory = directory or cache_dir()
    library = directory / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if library.exists():
        return library
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            partial = Path(tmp) / library.name
            done = subprocess.run([path, *CFLAGS, str(source), "-o", str(partial)], capture_output=True, text=True)
            if done.returncode != 0:
                first = (done.stderr.strip().splitlines() or ["no message"])[0]
                raise KernelBuildError(f"{source.name}: `{compiler}` failed ({first}); set kernels: torch to skip it")
            os.replace(partial, library)
    except OSError as exc:
        raise KernelBuildError(f"{directory}: cannot keep the built kernel there ({exc.strerror}); "
                               "set XDG_CACHE_HOME to a writable folder, or kernels: torch") from None
    return library


@functools.cache
def load() -> ctypes.CDLL:
    """The built kernel, loaded once per process (ctypes releases the GIL while it runs)."""
    library = build()
    try:
        # torch is imported, so the library's libgomp.so.1 resolves to torch's own OpenMP runtime:
        # one thread pool, sized by torch.set_num_threads, not two competing for the cores.
        lib = ctypes.CDLL(str(library))
    except OSError as exc:
        raise KernelBuildError(f"{library}: cannot be loaded ({exc}); delete it to rebuild, or set kernels: torch") from None
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    lib.block1_forward.argtypes = [pointer] * 5 + [size]
    lib.block1_forward.restype = None
    lib.block1_backward.argtypes = [pointer] * 8 + [size, ctypes.c_int]
    lib.block1_backward.restype = None
    return lib


def _fits(model: nn.Module) -> bool:
    """Whether `model` is the reference network with the first block the kernel is written for."""
    if not isinstance(model, ReferenceCNN):
        return False
    conv, pool = model.conv1, model.pool
    return (tuple(conv.weight.shape) == (CHANNELS, 1, KERNEL, KERNEL) and conv.bias is not None
            and conv.stride == (1, 1) and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1
            and pool.kernel_size == 2 and pool.stride == 2 and pool.padding == 0 and pool.dilation == 1
            and not pool.ceil_mode)


def plan(kernels: str, model: nn.Module, device: torch.device, precision: str = "fp32", compile: bool = False,
         processes: int = 1) -> tuple[bool, str]:
    """Whether training uses the fused first block, and one line saying so or why not.

    Builds the kernel when everything else says yes, so a missing compiler
    shows here, before any training, as a reason rather than an error.
    """
    if kernels == "torch":
        return False, "torch's kernels (kernels: torch)"
    why_not = ("the network is not the reference one" if not _fits(model)
               else f"the device is {device.type}" if device.type != "cpu"
               else "precision is bf16" if precision != "fp32"
               else "compile is on" if compile
               else f"{processes} processes share each batch" if processes > 1
               else None)
    if why_not is None:
        try:
            load()
        except KernelBuildError as exc:
            why_not = str(exc)
    if why_not is not None:
        return False, f"torch's kernels (kernels: auto, but {why_not})"
    return True, "the reference network's first block as one fused CPU kernel, torch's kernels for the rest (kernels: auto)"


class FusedBlock1(torch.autograd.Function):
    """conv1 -> 2x2 max pool -> ReLU of the reference CNN on (N, 1, 28, 28) float32 CPU images; channels-last out."""

    @staticmethod
    def forward(ctx, images: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        images, weight, bias = images.contiguous(), weight.detach().contiguous(), bias.detach().contiguous()
        n = images.shape[0]
        out = torch.empty((n, POOLED, POOLED, CHANNELS))  # channels-last storage of (N, 10, 12, 12)
        arg = torch.empty((n, POOLED, POOLED, CHANNELS), dtype=torch.uint8)
        load().block1_forward(images.data_ptr(), weight.data_ptr(), bias.data_ptr(), out.data_ptr(), arg.data_ptr(), n)
        ctx.save_for_backward(images, out, arg)
        return out.permute(0, 3, 1, 2)  # (N, 12, 12, 10) storage -> (N, 10, 12, 12), channels-last strides

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        images, out, arg = ctx.saved_tensors
        n = images.shape[0]
        grad = grad.permute(0, 2, 3, 1).contiguous()  # free when the gradient is channels-last already
        groups, threads = (n + LANES - 1) // LANES, torch.get_num_threads()
        # Per thread, not per group: a batch of 60000 would otherwise take 1.4 GB of scratch.
        dc_scratch = torch.empty((threads, CHANNELS * CONV_SIDE * CONV_SIDE * LANES))
        part_scratch = torch.empty((groups, PART))
        weight_grad = torch.empty((CHANNELS, 1, KERNEL, KERNEL))
        bias_grad = torch.empty(CHANNELS)
        load().block1_backward(images.data_ptr(), out.data_ptr(), arg.data_ptr(), grad.data_ptr(),
                               weight_grad.data_ptr(), bias_grad.data_ptr(), dc_scratch.data_ptr(),
                               part_scratch.data_ptr(), n, threads)
        return None, weight_grad, bias_grad


def reference_forward(model: ReferenceCNN) -> Callable[[torch.Tensor], torch.Tensor]:
    """`model`'s forward with its first block fused where the kernel takes the images, torch's layers otherwise."""

    def forward(images: torch.Tensor) -> torch.Tensor:
        fits = (images.device.type == "cpu" and images.dtype == torch.float32 and not images.requires_grad
                and tuple(images.shape[1:]) == (1, IMAGE_SIDE, IMAGE_SIDE))
        x = FusedBlock1.apply(images, model.conv1.weight, model.conv1.bias) if fits else model.first_block(images)
        return model.rest(x)

    return forward
