"""The project's kernels against torch's layers and optimizers, and the same bits on any instruction set."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from mnist_pipeline.compute import kernels
from mnist_pipeline.compute.shards import Workers
from mnist_pipeline.config import TrainConfig
from mnist_pipeline.data import Split
from mnist_pipeline.model import ModelConfig, ReferenceCNN, build_model
from mnist_pipeline.training import Compute, prepare, train

from conftest import REPO_ROOT, requires_c_compiler

CPU = torch.device("cpu")
NAMES = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc.weight", "fc.bias"]
needs_compiler = requires_c_compiler()


def _reference(seed=0):
    torch.manual_seed(seed)
    return ReferenceCNN()


def _images(n, seed=0):
    """Normalised-looking digits whose top rows are blank, so that many pooling windows hold ties."""
    images = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    images[:, :, :8] = -0.4242  # the normalised background
    return images


def _labels(n, seed=1):
    return torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed))


def _torch_reference(model):
    """A separate torch network with `model`'s weights (the kernels hold `model`'s as views of their block)."""
    twin = ReferenceCNN()
    twin.load_state_dict(model.state_dict())
    return twin


@needs_compiler
@pytest.mark.parametrize("n", [64, 13, 1])  # whole groups of eight images, a partial group, one image
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_and_gradients_match_torchs_layers(n, smoothing):
    model = _reference()
    own = kernels.ReferenceKernels(model)
    twin = _torch_reference(model)
    images, labels = _images(n), _labels(n)
    loss, grads = own.gradients(images, labels, smoothing)
    expected_loss = F.cross_entropy(twin(images), labels, reduction="sum", label_smoothing=smoothing)
    expected = torch.autograd.grad(expected_loss, list(twin.parameters()))
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-6)
    for name, got, want in zip(NAMES, grads, expected, strict=True):
        assert got.shape == want.shape, name
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=name)


@needs_compiler
def test_scores_and_logits_match_torchs():
    model = _reference()
    own = kernels.ReferenceKernels(model)
    twin = _torch_reference(model)
    images, labels = _images(100), _labels(100)
    logits = twin(images)
    torch.testing.assert_close(own.logits(images), logits, rtol=1e-5, atol=1e-5)
    loss, predicted, confidence = own.score(images, labels)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels, reduction="none"), rtol=1e-5, atol=1e-6)
    assert torch.equal(predicted, logits.argmax(dim=1))
    torch.testing.assert_close(confidence, torch.softmax(logits, dim=1).max(dim=1).values, rtol=1e-6, atol=1e-7)


@needs_compiler
def test_extreme_logits_keep_a_finite_loss_as_torch_does():
    """exp and log are the kernels' own: a logit far above the others must not overflow them."""
    model = _reference()
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([90.0, -90.0, 0, 0, 0, 0, 0, 0, 0, 0]))
    own = kernels.ReferenceKernels(model)
    images, labels = _images(3), torch.tensor([0, 1, 2])
    loss, predicted, confidence = own.score(images, labels)
    expected = F.cross_entropy(_torch_reference(model)(images), labels, reduction="none")
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert predicted.tolist() == [0, 0, 0] and torch.equal(confidence, torch.ones(3))


@needs_compiler
def test_pooling_ties_send_the_gradient_where_torch_sends_it():
    """A zero conv1 weight ties every window while the images under it differ: the gradient must reach the
    first position of each window, as max_pool2d sends it, or conv1's weight gradient comes out different."""
    model = _reference()
    with torch.no_grad():
        model.conv1.weight.zero_()
        model.conv1.bias.fill_(0.3)
    own = kernels.ReferenceKernels(model)
    twin = _torch_reference(model)
    images, labels = _images(16), _labels(16)
    _, grads = own.gradients(images, labels)
    expected = torch.autograd.grad(F.cross_entropy(twin(images), labels, reduction="sum"), list(twin.parameters()))
    # Sending ties to another position of the window moves these by as much as they are.
    assert grads[0].abs().max() > 1e-3
    torch.testing.assert_close(grads[0], expected[0], rtol=1e-4, atol=1e-6)


@needs_compiler
def test_nan_pixels_come_out_as_torch_makes_them():
    model = _reference()
    own = kernels.ReferenceKernels(model)
    images = _images(8)
    images[3, 0, 10, 10] = float("nan")
    logits = own.logits(images)
    torch.testing.assert_close(logits, _torch_reference(model)(images), equal_nan=True, rtol=1e-5, atol=1e-5)
    assert logits[3].isnan().all() and not logits[2].isnan().any()


def test_the_kernels_refuse_what_they_are_not_written_for():
    with pytest.raises(ValueError, match="reference network only"):
        kernels.ReferenceKernels(build_model(ModelConfig(architecture="compact")))


@needs_compiler
def test_the_kernels_refuse_images_of_another_shape():
    own = kernels.ReferenceKernels(_reference())
    with pytest.raises(ValueError, match=r"take \(n, 1, 28, 28\) float32 CPU images, got \(4, 1, 32, 32\)"):
        own.score(torch.zeros(4, 1, 32, 32))


def _torch_optimizer(name, params, **settings):
    if name == "sgd":
        return torch.optim.SGD(params, **settings)
    return (torch.optim.AdamW if name == "adamw" else torch.optim.Adam)(params, **settings)


def _own_optimizer(name, params, **settings):
    if name == "sgd":
        return kernels.SGD(params, **settings)
    return kernels.Adam(params, decoupled=name == "adamw", **settings)


@needs_compiler
@pytest.mark.parametrize(
    "name, settings",
    [
        ("sgd", {"lr": 0.05, "momentum": 0.5}),
        ("sgd", {"lr": 0.05, "momentum": 0.0, "weight_decay": 0.01}),
        ("sgd", {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}),
        ("adam", {"lr": 0.01, "betas": (0.9, 0.999), "weight_decay": 0.01}),
        ("adamw", {"lr": 0.01, "betas": (0.8, 0.999), "weight_decay": 0.05}),
    ],
)
def test_the_optimizers_update_as_torchs_do(name, settings):
    start = torch.randn(500, generator=torch.Generator().manual_seed(3))
    mine, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    own, reference = _own_optimizer(name, [mine], **settings), _torch_optimizer(name, [theirs], **settings)
    for step in range(5):
        grad = torch.randn(500, generator=torch.Generator().manual_seed(10 + step))
        mine.grad, theirs.grad = grad.clone(), grad.clone()
        own.step()
        reference.step()
    assert not torch.equal(mine.detach(), start)
    torch.testing.assert_close(mine.detach(), theirs.detach(), rtol=1e-5, atol=1e-6)
    # torch's form, so that a checkpoint's optimizer state reads as torch's does
    assert own.state_dict()["state"].keys() == reference.state_dict()["state"].keys()
    for number, state in own.state_dict()["state"].items():
        assert state.keys() == reference.state_dict()["state"][number].keys()


@needs_compiler
def test_an_optimizer_resumed_from_its_state_dict_continues_bit_for_bit():
    def run(steps, resume_after=None):
        parameter = torch.nn.Parameter(torch.ones(50))
        optimizer = kernels.Adam([parameter], lr=0.01, decoupled=True, weight_decay=0.1)
        for step in range(steps):
            if step == resume_after:
                state = optimizer.state_dict()
                optimizer = kernels.Adam([parameter], lr=0.01, decoupled=True, weight_decay=0.1)
                optimizer.load_state_dict(state)
            parameter.grad = torch.full((50,), 0.1 * (step + 1))
            optimizer.step()
        return parameter.detach()

    assert torch.equal(run(6), run(6, resume_after=3))


def _training_bits(threads: int) -> str:
    """A hash of the weights and history of a short training in the kernels, on synthetic images."""
    generator = torch.Generator().manual_seed(5)
    images = (torch.randint(0, 256, (300, 1, 28, 28), generator=generator).to(torch.float32) / 255 - 0.1307) / 0.3081
    labels = torch.randint(0, 10, (300,), generator=generator)
    config = TrainConfig(epochs=2, batch_size=64, lr=0.05, shards=2)
    setup = prepare(config, CPU, len(labels))
    assert setup.own_kernels, setup.kernels_line
    history = train(
        setup,
        Split(images, labels),
        Split(images[:100], labels[:100]),
        config,
        compute=Compute(workers=Workers(threads)),
    )
    digest = hashlib.sha256(torch.cat([p.detach().flatten() for p in setup.model.parameters()]).numpy().tobytes())
    digest.update(json.dumps([(r.train_loss, r.test_loss, r.test_accuracy) for r in history]).encode())
    return digest.hexdigest()


# The bits of _training_bits, as this project's kernels computed them when this was written (on a 2-core AMD
# EPYC, Zen 3). Any CPU must give them: a run on another machine that does not is the certificate failing
# there, a bug to report, not a number to update. Change it only with the arithmetic (kernels or training).
TRAINING_BITS = "2982d173f176a55797f8ae4c51d864528ab16e7a08a84409783b49f940369ac3"


@needs_compiler
def test_a_training_in_the_kernels_gives_the_bits_written_down_here():
    assert _training_bits(2) == TRAINING_BITS


@needs_compiler
def test_a_training_in_the_kernels_gives_the_same_bits_on_any_thread_count():
    assert _training_bits(1) == _training_bits(2) == _training_bits(3)


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _targets_this_cpu_runs() -> list[str]:
    targets = ["x86-64", "x86-64-v2"]
    if {"avx2", "fma", "bmi2", "movbe"} <= _cpu_flags():
        targets.append("x86-64-v3")
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= _cpu_flags():
        targets.append("x86-64-v4")
    return targets


CHILD = f"""
import sys
sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(REPO_ROOT / "tests")!r}]  # this module, and its conftest
from test_kernels import _training_bits
print(_training_bits(2))
"""


@needs_compiler
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the instruction sets compared are x86-64's")
def test_every_instruction_set_gives_the_same_bits(tmp_path):
    """The kernels built for each x86-64 level this CPU runs, and torch's own kernels capped at its lowest
    (ATEN_CPU_CAPABILITY, oneDNN and MKL), each in a fresh process: every run must give the bits of the default."""
    runs = {}
    for target in _targets_this_cpu_runs():
        env = {**os.environ, kernels.TARGET_ENV: target, "XDG_CACHE_HOME": str(tmp_path / "cache")}
        if target == "x86-64":
            env.update(ATEN_CPU_CAPABILITY="default", ONEDNN_MAX_CPU_ISA="SSE41", MKL_CBWR="COMPATIBLE")
        done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        runs[target] = done.stdout.strip()
    assert len(runs) >= 3
    assert set(runs.values()) == {TRAINING_BITS}, runs


@needs_compiler
@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"kernels": "torch"}, "kernels: torch"),
        ({"model": build_model(ModelConfig(architecture="compact"))}, "the network is not the reference one"),
        (
            {"model": build_model(ModelConfig(conv1_channels=12, conv2_channels=20))},
            "the network is not the reference one",
        ),
        ({"device": torch.device("cuda")}, "the device is cuda"),
        ({"precision": "bf16"}, "precision is bf16"),
        ({"compile": True}, "compile is on"),
        ({"processes": 2}, "2 processes share each batch"),
    ],
)
def test_plan_says_why_torchs_kernels_run(kwargs, reason):
    args = {"kernels": "auto", "model": build_model(ModelConfig()), "device": CPU, **kwargs}
    plan = kernels.plan(**args)
    assert not plan.used
    assert reason in plan.line and plan.line.startswith("torch's kernels")


@needs_compiler
def test_plan_takes_the_kernels_for_the_reference_on_a_cpu():
    plan = kernels.plan("auto", build_model(ModelConfig()), CPU)
    assert plan.used and plan.line.startswith("the reference network in the project's own CPU kernels")
    assert "the same bits on any CPU" in plan.line and "\n" not in plan.line


def test_a_missing_compiler_is_a_reason_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-here")
    with pytest.raises(
        kernels.KernelBuildError, match="no-such-compiler-here. is not on PATH; install gcc, or set kernels: torch"
    ):
        kernels.build(directory=tmp_path)
    assert list(tmp_path.iterdir()) == []


@needs_compiler
def test_a_failing_build_names_the_file_and_leaves_nothing_behind(tmp_path):
    broken = tmp_path / "broken.c"
    broken.write_text("this is not C\n")
    out = tmp_path / "cache"
    with pytest.raises(
        kernels.KernelBuildError, match=r"^broken.c: `cc` failed \(.*\); set kernels: torch to skip it$"
    ):
        kernels.build(source=broken, directory=out, compiler="cc")
    assert list(out.iterdir()) == []


@needs_compiler
def test_the_build_is_cached_per_source_and_target(tmp_path):
    first = kernels.build("x86-64", directory=tmp_path)
    again = kernels.build("x86-64", directory=tmp_path)
    assert first == again and first.stat().st_size > 0
    assert kernels.build("x86-64-v2", directory=tmp_path) != first
    edited = tmp_path / "reference_net.c"
    edited.write_text(kernels.SOURCE.read_text() + "\n/* edited */\n")
    assert kernels.build("x86-64", source=edited, directory=tmp_path) != first


@pytest.fixture
def unloaded_kernels():
    """kernels.load as in a new process (it keeps what it loaded), and as this process had it afterwards."""
    kernels.load.cache_clear()
    yield
    kernels.load.cache_clear()


def test_plan_falls_back_to_torch_when_the_kernels_cannot_be_built(unloaded_kernels, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-here")
    plan = kernels.plan("auto", build_model(ModelConfig()), CPU)
    assert not plan.used
    assert plan.line == (
        "torch's kernels (kernels: auto, but no C compiler: `no-such-compiler-here` is not on PATH; "
        "install gcc, or set kernels: torch)"
    )


@needs_compiler
def test_an_unwritable_cache_is_a_reason_not_a_crash(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should go")
    with pytest.raises(kernels.KernelBuildError, match="cannot keep the built kernel there .*set XDG_CACHE_HOME"):
        kernels.build(directory=blocker / "cache")
