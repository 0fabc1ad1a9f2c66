"""The download stage's work: the four MNIST files from a mirror, MD5-verified.

Standard library only: checking MD5 sums needs neither torch nor NumPy, and the stage
starts in a fraction of the time it would with them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from mnist_pipeline.errors import DataError

# The published files and their MD5s (the ones torchvision's MNIST class checks).
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

# Tried in order, as torchvision does; the first is the one that answers today.
OFFICIAL_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MIRROR_ENV = "MNIST_MIRROR"
DOWNLOAD_TIMEOUT_S = 15  # per connection and read: a silent server fails in seconds, not never
DOWNLOAD_ATTEMPTS = 2  # per mirror and file


def md5sum(path: Path) -> str:
    """MD5 hex digest of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _local_mirror_dir(mirror: str) -> Path | None:
    """The folder a mirror names, or None when it is a remote URL."""
    parsed = urllib.parse.urlparse(mirror)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme in ("", None) or len(parsed.scheme) == 1:  # a plain path (or a Windows drive)
        return Path(mirror)
    return None


def _check_local_mirror(mirror: str) -> None:
    """Fail before copying anything when a local mirror is not a folder with all four files."""
    local = _local_mirror_dir(mirror)
    if local is None:
        return
    if not local.is_dir():
        raise DataError(f"{MIRROR_ENV}={mirror}: no such folder; point it at a folder holding the four MNIST .gz files")
    for name in MNIST_FILES:
        if not (local / name).is_file():
            raise DataError(f"{name}: not found in {local}; the mirror must hold all four MNIST .gz files")


def _fetch_remote(url: str, dest: Path) -> None:
    """Download url to dest with bounded retries and timeouts; raise DataError with the last failure."""
    last_error: Exception | None = None
    for attempt in range(DOWNLOAD_ATTEMPTS):
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(dest, "wb") as out:
                shutil.copyfileobj(response, out)
            return
        except urllib.error.HTTPError as exc:  # the server answered "no": asking again will not help
            last_error = exc
            break
        except (urllib.error.URLError, OSError) as exc:
            last_error = exc
            if isinstance(getattr(exc, "reason", None), socket.gaierror):
                break  # no DNS: offline, and a retry in a second will not change that
            if attempt + 1 < DOWNLOAD_ATTEMPTS:
                time.sleep(1)
    reason = getattr(last_error, "reason", None) or last_error
    raise DataError(f"{url}: {reason}")


def _fetch(name: str, sources: list[str], dest: Path) -> None:
    """Copy or download `name` from the first source that has it into `dest`."""
    failures = []
    for source in sources:
        local = _local_mirror_dir(source)
        if local is not None:
            shutil.copyfile(local / name, dest)
            return
        try:
            _fetch_remote(source.rstrip("/") + "/" + name, dest)
            return
        except DataError as exc:
            failures.append(str(exc))
    raise DataError(
        f"{name}: no mirror answered ({'; '.join(failures)}); offline, set {MIRROR_ENV} to a local copy (folder or file:// URL)"
    )


def download_mnist(target_dir: str | Path, mirror: str | None = None) -> list[Path]:
    """Fetch the four MNIST files into target_dir and verify their MD5s.

    `mirror` (default: the MNIST_MIRROR environment variable) is a folder, a
    file:// URL or an http(s) URL; without one the official mirrors are tried.
    A file whose MD5 does not match is deleted, never left where a later stage
    or DVC could take it for data.
    """
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    sources = [mirror] if mirror else list(OFFICIAL_MIRRORS)
    if mirror:
        _check_local_mirror(mirror)
    target = Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, expected_md5 in MNIST_FILES.items():
        # Download beside the target and rename only once verified, so that an
        # interrupted or corrupt download never sits under the real name.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", dir=target)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _fetch(name, sources, tmp)
            actual_md5 = md5sum(tmp)
            if actual_md5 != expected_md5:
                raise DataError(
                    f"{name}: MD5 mismatch (expected {expected_md5}, got {actual_md5}); "
                    f"the source {sources[0]} has a damaged or wrong file"
                )
            os.replace(tmp, target / name)
        finally:
            tmp.unlink(missing_ok=True)
        written.append(target / name)
    return written
