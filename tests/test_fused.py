"""The fused first block against torch's own layers: same outputs and gradients, and when training uses it."""

import pytest
import torch
from torch.nn import functional as F

from conftest import requires_c_compiler
from mnist_pipeline import fused
from mnist_pipeline.config import TrainConfig
from mnist_pipeline.data import Split
from mnist_pipeline.device import place_model
from mnist_pipeline.model import ModelConfig, build_model
from mnist_pipeline.training import make_optimizer, train_one_epoch

CPU = torch.device("cpu")
needs_compiler = requires_c_compiler()


def _reference(seed=0):
    torch.manual_seed(seed)
    return place_model(build_model(ModelConfig()), CPU)


def _images(n, seed=0):
    """Normalised-looking digits whose top rows are blank, so that many pooling windows hold ties."""
    images = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    images[:, :, :8] = -0.4242  # the normalised background
    return images


@needs_compiler
@pytest.mark.parametrize("n", [64, 13, 1])  # whole groups of eight images, a partial group, one image
def test_fused_forward_and_gradients_match_torchs_layers(n):
    model = _reference()
    forward = fused.reference_forward(model)
    images, labels = _images(n), torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(forward(images), model(images), rtol=1e-5, atol=1e-5)
    params = list(model.parameters())
    expected = torch.autograd.grad(F.cross_entropy(model(images), labels), params)
    got = torch.autograd.grad(F.cross_entropy(forward(images), labels), params)
    for name, a, b in zip(["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc.weight", "fc.bias"], got, expected):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


@needs_compiler
def test_pooling_ties_send_the_gradient_where_torch_sends_it():
    """A zero conv1 weight ties every window while the images under it differ: the gradient must reach the
    first position of each window, as max_pool2d sends it, or the weight gradient comes out different."""
    model = _reference()
    with torch.no_grad():
        model.conv1.weight.zero_()
        model.conv1.bias.fill_(0.3)
    images = _images(16)
    grad = torch.randn(16, 10, 12, 12)
    block = fused.FusedBlock1.apply(images, model.conv1.weight, model.conv1.bias)
    torch.testing.assert_close(block, model.first_block(images))
    got = torch.autograd.grad(block, model.conv1.weight, grad)[0]
    expected = torch.autograd.grad(model.first_block(images), model.conv1.weight, grad)[0]
    # Entries reach about 100; sending ties to the last position instead moves them by about as much.
    assert got.abs().max() > 10
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)


@needs_compiler
def test_nan_pixels_come_out_as_torch_makes_them():
    model = _reference()
    images = _images(8)
    images[3, 0, 10, 10] = float("nan")
    block = fused.FusedBlock1.apply(images, model.conv1.weight, model.conv1.bias)
    torch.testing.assert_close(block, model.first_block(images), equal_nan=True)
    assert block[3].isnan().any() and not block[2].isnan().any()


@needs_compiler
def test_the_weight_gradient_is_the_same_for_any_thread_count():
    model = _reference()
    images = _images(40)
    weight = model.conv1.weight
    gradients = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            out = fused.FusedBlock1.apply(images, weight, model.conv1.bias)
            gradients.append(torch.autograd.grad(out.sum(), weight)[0])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(gradients[0], g) for g in gradients[1:])


@needs_compiler
def test_a_training_epoch_fused_ends_where_torchs_ends():
    images = _images(256)
    labels = torch.randint(0, 10, (256,), generator=torch.Generator().manual_seed(2))
    split = Split(images, labels)
    losses, weights = [], []
    for use_fused in (False, True):
        model = _reference()
        optimizer = make_optimizer(model, TrainConfig(lr=0.05))
        forward = fused.reference_forward(model) if use_fused else None
        losses.append(train_one_epoch(model, optimizer, split, 32, torch.Generator().manual_seed(0), forward=forward))
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    torch.testing.assert_close(weights[1], weights[0], rtol=1e-4, atol=1e-6)


def test_images_the_kernel_does_not_take_go_through_torchs_layers():
    model = _reference()
    images = torch.randn(4, 1, 32, 32)  # 32x32 makes 500 features where fc takes 320: torch's layers say so
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        fused.reference_forward(model)(images)
    double = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    assert fused.reference_forward(model.double())(double).dtype == torch.float64


@needs_compiler
@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"kernels": "torch"}, "kernels: torch"),
        ({"model": build_model(ModelConfig(architecture="compact"))}, "the network is not the reference one"),
        ({"model": build_model(ModelConfig(conv1_channels=12, conv2_channels=20))}, "the network is not the reference one"),
        ({"device": torch.device("cuda")}, "the device is cuda"),
        ({"precision": "bf16"}, "precision is bf16"),
        ({"compile": True}, "compile is on"),
        ({"processes": 2}, "2 processes share each batch"),
    ],
)
def test_plan_says_why_torchs_kernels_run(kwargs, reason):
    args = {"kernels": "auto", "model": build_model(ModelConfig()), "device": CPU, **kwargs}
    uses_fused, line = fused.plan(**args)
    assert not uses_fused
    assert reason in line and line.startswith("torch's kernels")


@needs_compiler
def test_plan_takes_the_fused_kernel_for_the_reference_on_a_cpu():
    uses_fused, line = fused.plan("auto", build_model(ModelConfig()), CPU)
    assert uses_fused and "fused" in line and "\n" not in line


def test_a_missing_compiler_is_a_reason_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-here")
    with pytest.raises(fused.KernelBuildError, match="no-such-compiler-here. is not on PATH; install gcc, or set kernels: torch"):
        fused.build(directory=tmp_path)
    assert list(tmp_path.iterdir()) == []


@needs_compiler
def test_a_failing_build_names_the_file_and_leaves_nothing_behind(tmp_path):
    broken = tmp_path / "broken.c"
    broken.write_text("this is not C\n")
    out = tmp_path / "cache"
    with pytest.raises(fused.KernelBuildError, match=r"^broken.c: `cc` failed \(.*\); set kernels: torch to skip it$"):
        fused.build(broken, out, "cc")
    assert list(out.iterdir()) == []


@needs_compiler
def test_the_build_is_cached_per_source(tmp_path):
    first = fused.build(directory=tmp_path)
    again = fused.build(directory=tmp_path)
    assert first == again and first.stat().st_size > 0
    edited = tmp_path / "reference_block1.c"
    edited.write_text(fused.SOURCE.read_text() + "\n/* edited */\n")
    assert fused.build(edited, tmp_path) != first


def test_plan_falls_back_to_torch_when_the_kernel_cannot_be_built(monkeypatch):
    def cannot_build():
        raise fused.KernelBuildError("no C compiler: `cc` is not on PATH; install gcc, or set kernels: torch")

    monkeypatch.setattr(fused, "load", cannot_build)
    uses_fused, line = fused.plan("auto", build_model(ModelConfig()), CPU)
    assert not uses_fused
    assert line == "torch's kernels (kernels: auto, but no C compiler: `cc` is not on PATH; install gcc, or set kernels: torch)"


@needs_compiler
def test_an_unwritable_cache_is_a_reason_not_a_crash(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should go")
    with pytest.raises(fused.KernelBuildError, match="cannot keep the built kernel there .*set XDG_CACHE_HOME"):
        fused.build(directory=blocker / "cache")
