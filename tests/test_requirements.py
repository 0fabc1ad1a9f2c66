"""requirements.lock installs on the platforms the README names: Linux-only wheels carry their marker."""

from packaging.requirements import Requirement

from check_platforms import requirements_on  # tools/: the markers as check_platforms.py applies them
from conftest import REPO_ROOT


def _pins() -> list[Requirement]:
    lines = (REPO_ROOT / "requirements.lock").read_text().splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


def test_cuda_and_triton_wheels_are_pinned_for_linux_only():
    """torch's CUDA runtime and Triton exist for Linux alone (torch's own metadata says platform_system == "Linux")."""
    linux_only = [p for p in _pins() if p.name.startswith(("nvidia-", "cuda-", "triton")) and p.name != "nvidia-ml-py"]
    assert len(linux_only) >= 18
    for pin in linux_only:
        assert str(pin.marker) == 'platform_system == "Linux"', pin


def test_on_macos_the_lock_keeps_everything_else():
    kept = {p.name for p in requirements_on("macosx_14_0_arm64")}
    assert {"torch", "torchvision", "dvc", "mlflow", "nvidia-ml-py"} <= kept
    assert not any(
        name.startswith(("cuda-", "triton")) or (name.startswith("nvidia-") and name != "nvidia-ml-py") for name in kept
    )
