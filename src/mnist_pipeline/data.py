"""MNIST on disk as arrays and tensors: parse the IDX files, load a split as normalised tensors.

NumPy only at import: the plot stage reads raw images here and should not pay for torch,
so torch is imported inside the functions that make tensors.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mnist_pipeline.errors import DataError

if TYPE_CHECKING:
    import torch

    from mnist_pipeline.config import DataConfig

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


def read_idx(path: str | Path, expected_magic: int) -> np.ndarray:
    """Parse a (gzipped) IDX file of unsigned bytes into an array shaped as its header says."""
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)  # one call into zlib, a little faster than reading a GzipFile in pieces
    if len(raw) < 4:
        raise DataError(f"{path}: too short to be an IDX file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DataError(f"{path}: IDX magic number {magic}, expected {expected_magic}")
    ndim = raw[3]  # the low byte of the magic is the number of dimensions
    header_end = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    payload = np.frombuffer(raw, dtype=np.uint8, offset=header_end)
    if payload.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says {shape} = {int(np.prod(shape))} bytes, file holds {payload.size}")
    return payload.reshape(shape)


@dataclass(frozen=True)
class Split:
    """One split of MNIST as tensors: images (N, 1, 28, 28) float32 normalised, labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> Split:
        """The same split on `device`."""
        return Split(self.images.to(device), self.labels.to(device))


def raw_images(data_dir: str | Path, train: bool) -> np.ndarray:
    """The images of a split as stored: (N, 28, 28) uint8, 0 is background."""
    prefix = "train" if train else "t10k"
    return read_idx(Path(data_dir) / f"{prefix}-images-idx3-ubyte.gz", IDX_IMAGES_MAGIC)


def load_split(data_dir: str | Path, train: bool, mean: float, std: float, limit: int | None = None) -> Split:
    """Load the train or test split once into normalised tensors (the first `limit` images when set)."""
    prefix = "train" if train else "t10k"
    data_dir = Path(data_dir)
    images = raw_images(data_dir, train)
    labels = read_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz", IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(f"{data_dir}: {len(images)} {prefix} images but {len(labels)} labels")
    import torch

    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    pixels = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 28, 28) -> (N, 1, 28, 28)
    return Split(normalize(pixels, mean, std), torch.from_numpy(labels.astype(np.int64)))


def load_training(
    data_dir: str | Path, mean: float, std: float, limit: int | None = None, validation: int = 0
) -> tuple[Split, Split | None]:
    """The training split as (images to train on, held-out validation images or None).

    The validation images are the split's last `validation`; training takes the first `limit` of the
    rest (all of them when None). The reference run holds none out and trains on all 60000.
    """
    if not validation:
        return load_split(data_dir, True, mean, std, limit), None
    whole = load_split(data_dir, True, mean, std)
    remaining = len(whole) - validation
    end = remaining if limit is None else min(limit, remaining)
    held_out = Split(whole.images[remaining:], whole.labels[remaining:])
    return Split(whole.images[:end], whole.labels[:end]), held_out


def training_splits(data: DataConfig, device: torch.device) -> tuple[Split, Split]:
    """The images a run trains on and the test images it is scored on after each epoch, as `data` slices them, on `device`."""
    train_split, _ = load_training(data.dir, data.mean, data.std, data.max_train_images, data.validation_images)
    test_split = load_split(data.dir, False, data.mean, data.std, data.max_test_images)
    return train_split.to(device), test_split.to(device)


def raw_pixels(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Normalised images back to 0-255 pixels, rounded, on the CPU: normalize undone, what a served model takes."""
    return ((images.cpu() * std + mean) * 255).round()


def normalize(pixels: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Raw 0-255 pixels -> float32, scaled to [0, 1] then standardised, as ToTensor + Normalize do."""
    import torch

    # In place on the one float copy: the same bits as `(x / 255 - mean) / std`, without allocating (and
    # page-faulting) three more copies of 188 MB for the training set, which took 4x as long.
    return pixels.to(torch.float32, copy=True).div_(255.0).sub_(mean).div_(std)


def blank_value(mean: float, std: float) -> float:
    """A blank (0) pixel after normalisation: what augmentation fills uncovered pixels with."""
    import torch

    return float(normalize(torch.zeros(()), mean, std))
