"""The reference network on a CPU in the project's own kernels (csrc/reference_net.c): the same bits on any CPU.

torch's CPU kernels choose their code by the CPU they run on, so a training on an AMD and an Intel CPU, or
under another ATEN_CPU_CAPABILITY, ends with other bits (docs/design.md, "Determinism"). With `kernels: auto`
(the default) the reference network trains and is scored on a CPU with csrc/reference_net.c instead: its
forward and backward passes, its loss and its optimizers' updates, each value computed by one fixed sequence
of single-precision operations. It is built on first use with the machine's C compiler (`cc`, or $CC)
without fused multiply-adds or reassociation, for x86-64-v3 where the CPU has AVX2 and for plain x86-64
elsewhere: both builds give the same bits, so the target changes only the speed
(MNIST_PIPELINE_KERNEL_TARGET chooses another, for a check). Where it does not apply (another network, a
GPU, bf16, torch.compile, several processes) or cannot be built, training uses torch's kernels and the train
stage says why in one line. The checkpoint and the logged model are the plain torch network either way.
Imports torch only.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mnist_pipeline.errors import PipelineError
from mnist_pipeline.model import ReferenceCNN

SOURCE = Path(__file__).with_name("csrc") / "reference_net.c"
# No -march=native and no -ffast-math: the arithmetic must not depend on the CPU that builds or runs it.
CFLAGS = ("-O3", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared", "-std=gnu11", "-Wno-psabi")
TARGET_ENV = "MNIST_PIPELINE_KERNEL_TARGET"
IMAGE_SIDE, CLASSES = 28, 10
PARAMETER_SHAPES = ((10, 1, 5, 5), (10,), (20, 10, 5, 5), (20,), (10, 320), (10,))  # the reference's, in order
PARAMETERS = sum(math.prod(shape) for shape in PARAMETER_SHAPES)


class KernelBuildError(PipelineError):
    """The kernels could not be compiled or loaded here."""


def cache_dir() -> Path:
    """Where built kernels are kept: $XDG_CACHE_HOME/mnist-pipeline (~/.cache/mnist-pipeline)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mnist-pipeline"


def default_target() -> str | None:
    """The -march the kernels are built for: $MNIST_PIPELINE_KERNEL_TARGET, else x86-64-v3 on a CPU with AVX2 and FMA,
    plain x86-64 on other x86-64 CPUs, and the compiler's default elsewhere (None). Only the speed depends on it."""
    chosen = os.environ.get(TARGET_ENV)
    if chosen:
        return chosen
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    cpuinfo = Path("/proc/cpuinfo")
    flags = set()
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return "x86-64-v3" if {"avx2", "fma", "bmi2", "movbe"} <= flags else "x86-64"


def build(
    target: str | None = None,
    source: Path = SOURCE,
    directory: Path | None = None,
    compiler: str | None = None,
) -> Path:
    """Compile `source` for `target` into a shared library under `directory` (once per source, compiler and target).

    The file name hashes all of them, so an edited kernel or another compiler gets its own build; the
    library is written under a temporary name and renamed, so parallel runs (`dvc queue`) never load half a file.
    """
    compiler = compiler or os.environ.get("CC") or "cc"
    path = shutil.which(compiler)
    if path is None:
        raise KernelBuildError(f"no C compiler: `{compiler}` is not on PATH; install gcc, or set kernels: torch")
    flags = [*CFLAGS, *([f"-march={target}"] if target else [])]
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([source.read_text(), path, version, *flags]).encode())
    directory = directory or cache_dir()
    library = directory / f"{source.stem}-{target or 'default'}-{key.hexdigest()[:16]}.so"
    if library.exists():
        return library
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            partial = Path(tmp) / library.name
            done = subprocess.run([path, *flags, str(source), "-o", str(partial)], capture_output=True, text=True)
            if done.returncode != 0:
                first = (done.stderr.strip().splitlines() or ["no message"])[0]
                raise KernelBuildError(f"{source.name}: `{compiler}` failed ({first}); set kernels: torch to skip it")
            os.replace(partial, library)
    except OSError as exc:
        raise KernelBuildError(
            f"{directory}: cannot keep the built kernel there ({exc.strerror}); "
            "set XDG_CACHE_HOME to a writable folder, or kernels: torch"
        ) from None
    return library


@functools.cache
def load(target: str | None = None) -> ctypes.CDLL:
    """The kernels built for `target` (default_target() when None), loaded once per process.

    ctypes releases the GIL while a kernel runs, so the shard workers compute side by side.
    """
    library = build(target or default_target())
    try:
        lib = ctypes.CDLL(str(library))
    except OSError as exc:
        raise KernelBuildError(
            f"{library}: cannot be loaded ({exc}); delete it to rebuild, or set kernels: torch"
        ) from None
    pointer, size, real = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    lib.reference_parameters.restype = ctypes.c_int
    if lib.reference_parameters() != PARAMETERS:
        raise KernelBuildError(f"{library}: holds {lib.reference_parameters()} parameters, not {PARAMETERS}; delete it")
    lib.reference_gradients.argtypes = [pointer, pointer, pointer, size, real, pointer]
    lib.reference_gradients.restype = ctypes.c_double
    lib.reference_score.argtypes = [pointer, pointer, pointer, size, pointer, pointer, pointer, pointer]
    lib.reference_score.restype = None
    lib.sgd_step.argtypes = [pointer, pointer, pointer, size, real, real, real, ctypes.c_int]
    lib.sgd_step.restype = None
    lib.adam_step.argtypes = [pointer, pointer, pointer, pointer, size, *[real] * 5, ctypes.c_int, real, real]
    lib.adam_step.restype = None
    return lib


def fits(model: nn.Module) -> bool:
    """Whether `model` is the reference network with the shapes the kernels are written for."""
    if not isinstance(model, ReferenceCNN):
        return False
    shapes = tuple(tuple(p.shape) for p in model.parameters())
    conv1, conv2, pool = model.conv1, model.conv2, model.pool
    return (
        shapes == PARAMETER_SHAPES
        and all(
            c.stride == (1, 1) and c.padding == (0, 0) and c.dilation == (1, 1) and c.groups == 1
            for c in (conv1, conv2)
        )
        and pool.kernel_size == 2
        and pool.stride == 2
        and pool.padding == 0
        and pool.dilation == 1
        and not pool.ceil_mode
    )


@dataclass(frozen=True)
class Plan:
    """Whether a training or an evaluation uses these kernels, and the one line that says so or why not."""

    used: bool
    line: str


def plan(
    kernels: str,
    model: nn.Module,
    device: torch.device,
    precision: str = "fp32",
    compile: bool = False,
    processes: int = 1,
) -> Plan:
    """Whether the reference network runs in these kernels here, and why not where it does not.

    Builds the kernels when everything else says yes, so a missing compiler shows here, before any
    training, as a reason rather than an error.
    """
    if kernels == "torch":
        return Plan(False, "torch's kernels (kernels: torch): the same bits on this CPU model only")
    why_not = (
        "the network is not the reference one"
        if not fits(model)
        else f"the device is {device.type}"
        if device.type != "cpu"
        else "precision is bf16"
        if precision != "fp32"
        else "compile is on"
        if compile
        else f"{processes} processes share each batch"
        if processes > 1
        else None
    )
    if why_not is None:
        try:
            load()
        except KernelBuildError as exc:
            why_not = str(exc)
    if why_not is not None:
        return Plan(False, f"torch's kernels (kernels: auto, but {why_not})")
    return Plan(
        True, "the reference network in the project's own CPU kernels (kernels: auto): the same bits on any CPU"
    )


def _address(tensor: torch.Tensor) -> int:
    return tensor.data_ptr()


class ReferenceKernels:
    """The reference network's parameters as one contiguous block that the kernels read, and the kernels' calls.

    The model's parameters become views of that block (in place, so an optimizer made before keeps them);
    its state_dict, and so the checkpoint, is unchanged in form.
    """

    def __init__(self, model: nn.Module):
        if not fits(model):
            raise ValueError("the project's kernels are written for the reference network only")
        self.lib = load()
        self.parameters = list(model.parameters())
        self.flat = torch.empty(PARAMETERS)
        offset = 0
        with torch.no_grad():
            for parameter in self.parameters:
                count = parameter.numel()
                view = self.flat[offset : offset + count].view(parameter.shape)
                view.copy_(parameter)
                parameter.data = view
                offset += count

    def gradients(
        self, images: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(summed loss, gradient of that sum for each parameter) of `images` (n, 1, 28, 28) against `labels`."""
        images = _images(images)
        labels = labels.to(torch.int64).contiguous()
        grad = torch.empty(PARAMETERS)
        loss = self.lib.reference_gradients(
            _address(self.flat), _address(images), _address(labels), len(labels), label_smoothing, _address(grad)
        )
        views, offset = [], 0
        for parameter in self.parameters:
            views.append(grad[offset : offset + parameter.numel()].view(parameter.shape))
            offset += parameter.numel()
        return torch.tensor(loss, dtype=torch.float32), views

    def score(
        self, images: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per image: the loss against its label (0 without labels), the predicted digit and its probability."""
        images = _images(images)
        n = len(images)
        if labels is not None:
            labels = labels.to(torch.int64).contiguous()
        loss, confidence = torch.empty(n), torch.empty(n)
        predicted = torch.empty(n, dtype=torch.int64)
        self.lib.reference_score(
            _address(self.flat),
            _address(images),
            _address(labels) if labels is not None else None,
            n,
            None,
            _address(loss),
            _address(predicted),
            _address(confidence),
        )
        return loss, predicted, confidence

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The network's logits (n, 10) for `images`, as the kernels compute them."""
        images = _images(images)
        n = len(images)
        out, loss, confidence = torch.empty(n, CLASSES), torch.empty(n), torch.empty(n)
        predicted = torch.empty(n, dtype=torch.int64)
        self.lib.reference_score(
            _address(self.flat),
            _address(images),
            None,
            n,
            _address(out),
            _address(loss),
            _address(predicted),
            _address(confidence),
        )
        return out


def _images(images: torch.Tensor) -> torch.Tensor:
    if (
        images.device.type != "cpu"
        or images.dtype != torch.float32
        or tuple(images.shape[1:]) != (1, IMAGE_SIDE, IMAGE_SIDE)
    ):
        raise ValueError(
            f"the kernels take (n, 1, 28, 28) float32 CPU images, got {tuple(images.shape)} "
            f"{images.dtype} on {images.device}"
        )
    return images.detach().contiguous()


def _checked(parameter: torch.Tensor) -> None:
    if parameter.device.type != "cpu" or parameter.dtype != torch.float32 or not parameter.is_contiguous():
        raise ValueError("the kernels' optimizers take contiguous float32 CPU parameters")


class SGD(torch.optim.Optimizer):
    """torch.optim.SGD's update (momentum, weight decay; no dampening or Nesterov) in the project's kernels.

    torch's own rounds `p - lr * buf` as one fused multiply-add on CPUs that have one and as two operations
    elsewhere; this rounds the product and the difference each on its own, everywhere. Its state_dict has
    torch's form ("momentum_buffer").
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # torch's signature
        lib = load()
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                _checked(parameter)
                grad = parameter.grad.contiguous()
                buffer, first = None, False
                if group["momentum"] != 0:  # torch keeps no buffer without momentum
                    state = self.state[parameter]
                    first = "momentum_buffer" not in state
                    if first:
                        state["momentum_buffer"] = torch.zeros_like(parameter, memory_format=torch.contiguous_format)
                    buffer = _address(state["momentum_buffer"])
                lib.sgd_step(
                    _address(parameter),
                    _address(grad),
                    buffer,
                    parameter.numel(),
                    group["lr"],
                    group["momentum"],
                    group["weight_decay"],
                    int(first),
                )
        return None


class Adam(torch.optim.Optimizer):
    """torch.optim.Adam's update (AdamW's with `decoupled`), without amsgrad, in the project's kernels.

    The bias corrections are computed once per step in double precision; each element's update is a
    fixed sequence of single-precision operations. Its state_dict has torch's form.
    """

    def __init__(
        self,
        params,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled: bool = False,
    ):
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "decoupled": decoupled}
        )

    @torch.no_grad()
    def step(self, closure=None):  # torch's signature
        lib = load()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                _checked(parameter)
                grad = parameter.grad.contiguous()
                state = self.state[parameter]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(parameter, memory_format=torch.contiguous_format)
                    state["exp_avg_sq"] = torch.zeros_like(parameter, memory_format=torch.contiguous_format)
                state["step"] += 1
                step = int(state["step"].item())
                step_size = group["lr"] / (1 - beta1**step)
                bias2_sqrt = math.sqrt(1 - beta2**step)
                lib.adam_step(
                    _address(parameter),
                    _address(grad),
                    _address(state["exp_avg"]),
                    _address(state["exp_avg_sq"]),
                    parameter.numel(),
                    group["lr"],
                    beta1,
                    beta2,
                    group["eps"],
                    group["weight_decay"],
                    int(group["decoupled"]),
                    step_size,
                    bias2_sqrt,
                )
        return None
