"""Does every package requirements.lock pins have a release for another platform? pip's resolver, asked offline-free.

pip evaluates environment markers against the machine it runs on, even with --platform, so a
Linux host cannot resolve the whole tree for macOS. This script applies the lock's markers for
the target platform itself (packaging, as pip would there), then asks pip, with --platform,
--only-binary=:all: and --no-deps, whether each remaining pin has a distribution for it.
Pure-Python packages published only as source (antlr4-python3-runtime) are built into wheels first.

    .venv/bin/python tools/check_platforms.py                     # macOS on Apple silicon, Windows x86-64
    .venv/bin/python tools/check_platforms.py macosx_14_0_arm64   # one platform tag

Needs the package index (it downloads every wheel, a few hundred MB); not a test, since no test
may need the network. What it found is in docs/testing.md.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCK = REPO_ROOT / "requirements.lock"
SOURCE_ONLY = ("antlr4-python3-runtime",)  # pure Python, published as an sdist only
MARKERS = {
    "macosx_14_0_arm64": {
        "platform_system": "Darwin",
        "sys_platform": "darwin",
        "platform_machine": "arm64",
        "os_name": "posix",
    },
    "win_amd64": {"platform_system": "Windows", "sys_platform": "win32", "platform_machine": "AMD64", "os_name": "nt"},
}


def requirements_on(platform: str) -> list[Requirement]:
    """The lock's requirements whose markers hold on `platform` (Python 3.11)."""
    environment = {
        "python_version": "3.11",
        "python_full_version": "3.11.7",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_version": "",
        "extra": "",
        **MARKERS[platform],
    }
    lines = [line for line in LOCK.read_text().splitlines() if line.strip() and not line.startswith("#")]
    requirements = [Requirement(line) for line in lines]
    return [r for r in requirements if r.marker is None or r.marker.evaluate(environment)]


def pins_for(platform: str) -> list[str]:
    """The lock's pins that hold on `platform`, markers dropped: what pip is asked for there."""
    return [f"{requirement.name}{requirement.specifier}" for requirement in requirements_on(platform)]


def check(platform: str, wheels: Path) -> bool:
    with tempfile.TemporaryDirectory() as folder:
        pins = Path(folder) / "pins.txt"
        pins.write_text("\n".join(pins_for(platform)) + "\n")
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--ignore-installed",
                "--no-deps",
                "--only-binary=:all:",
                "--find-links",
                str(wheels),
                "--platform",
                platform,
                "--python-version",
                "3.11",
                "--implementation",
                "cp",
                "--abi",
                "cp311",
                "--target",
                str(Path(folder) / "target"),
                "-r",
                str(pins),
            ],
            capture_output=True,
            text=True,
        )
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR: ") and "Ignored" not in line]
    print(
        f"{platform}: {'every pin has a distribution' if done.returncode == 0 else errors[0] if errors else 'failed'}"
    )
    return done.returncode == 0


def main() -> None:
    platforms = sys.argv[1:] or list(MARKERS)
    with tempfile.TemporaryDirectory() as wheels:
        pins = {
            Requirement(line).name: line.split(";")[0].strip()
            for line in LOCK.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        }
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "-q",
                "-w",
                wheels,
                *(pins[name] for name in SOURCE_ONLY),
            ],
            check=True,
            capture_output=True,
        )
        results = [check(platform, Path(wheels)) for platform in platforms]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
