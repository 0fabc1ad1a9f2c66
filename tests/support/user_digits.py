"""MNIST digits redrawn the way people bring digits: a seeded set for measuring `framing.frame_digit`.

Each MNIST digit is enlarged, turned a little, placed off-centre on a larger
canvas of one of several sizes, in either polarity, on a grey or coloured
background, with noise and specks of dust, and saved as a grey, RGB or RGBA
(transparent background, the digit only in alpha) PNG or as a JPEG. The same
seed gives the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CANVAS_SIDES = (64, 128, 256, 512, 1024)  # the longer side of a canvas, pixels
LARGE_CANVAS_SIDE = 3000  # a few images are this large (a phone photo)
LARGE_SHARE = 0.02
MAX_TURN_DEGREES = 10.0
INVERTED_SHARE = 0.5  # dark digit on a light background, as drawn or scanned
COLOURED_SHARE = 0.2
TRANSPARENT_SHARE = 0.2  # RGBA, the digit only in the alpha channel
JPEG_SHARE = 0.25
NOISY_SHARE = 0.5
MAX_NOISE = 0.06  # standard deviation of the pixel noise, on a 0-1 scale
SPECKLED_SHARE = 0.3


@dataclass(frozen=True)
class UserDigit:
    """One image of the set: where it is, its label, the MNIST test index it comes from, how it was drawn."""

    path: Path
    label: int
    mnist_index: int
    kinds: tuple[str, ...]  # e.g. ("inverted", "jpeg", "noisy")
    turn_degrees: float  # counter-clockwise


def write_user_digits(
    digits: np.ndarray, labels: np.ndarray, directory: str | Path, seed: int, count: int, max_side: int | None = None
) -> list[UserDigit]:
    """Write `count` images drawn from MNIST `digits` (N, 28, 28) uint8 into `directory`; same seed, same files."""
    rng = np.random.default_rng(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    indices = rng.choice(len(digits), size=count, replace=False)
    written = []
    for number, index in enumerate(indices):
        image, kinds, extension, turn = draw_user_digit(digits[index], rng, max_side)
        path = directory / f"{number:05d}_{int(labels[index])}.{extension}"
        if extension == "jpg":
            image.save(path, quality=int(rng.integers(70, 96)))
        else:
            image.save(path)
        written.append(UserDigit(path, int(labels[index]), int(index), kinds, round(turn, 2)))
    return written


def draw_user_digit(
    digit: np.ndarray, rng: np.random.Generator, max_side: int | None = None
) -> tuple[Image.Image, tuple[str, ...], str, float]:
    """One MNIST digit (28, 28) uint8 redrawn on a canvas: (image, kinds, file extension, turn in degrees)."""
    kinds = []
    large = rng.random() < LARGE_SHARE
    longer = LARGE_CANVAS_SIDE if large else int(rng.choice(CANVAS_SIDES))
    if max_side:
        longer = min(longer, max_side)
    if longer == LARGE_CANVAS_SIDE:
        kinds.append("large")
    shorter = int(longer * rng.uniform(0.6, 1.0))
    width, height = (longer, shorter) if rng.random() < 0.5 else (shorter, longer)

    # The digit's ink (0-1), enlarged to 20-70% of the canvas's shorter side (never below MNIST's 20 px).
    rows, cols = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
    cropped = Image.fromarray(digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
    digit_height = max(24, int(shorter * rng.uniform(0.2, 0.7)))
    scale = digit_height / cropped.height
    enlarged = cropped.resize((max(1, round(cropped.width * scale)), digit_height), Image.Resampling.BICUBIC)
    turn = rng.uniform(-MAX_TURN_DEGREES, MAX_TURN_DEGREES)
    turned = enlarged.rotate(turn, resample=Image.Resampling.BICUBIC, expand=True)
    ink_patch = np.asarray(turned, dtype=np.float32) / 255
    ink = np.zeros((height, width), dtype=np.float32)
    top = int(rng.integers(0, max(1, height - ink_patch.shape[0]) + 1))
    left = int(rng.integers(0, max(1, width - ink_patch.shape[1]) + 1))
    patch = ink_patch[: height - top, : width - left]
    ink[top : top + patch.shape[0], left : left + patch.shape[1]] = patch
    if rng.random() < SPECKLED_SHARE:
        kinds.append("specks")
        radius = max(1, round(longer * 0.003))
        for _ in range(int(rng.integers(1, 8))):
            row, col = int(rng.integers(0, height)), int(rng.integers(0, width))
            ink[max(0, row - radius) : row + radius, max(0, col - radius) : col + radius] = 1.0

    inverted = rng.random() < INVERTED_SHARE
    if inverted:
        kinds.append("inverted")
        background_level, ink_level = rng.uniform(0.7, 1.0), rng.uniform(0.0, 0.2)
    else:
        background_level, ink_level = rng.uniform(0.0, 0.3), rng.uniform(0.8, 1.0)

    if rng.random() < TRANSPARENT_SHARE:
        kinds.append("rgba")
        colour = np.full(3, ink_level * 255) if rng.random() < 0.7 else rng.uniform(0, 255, 3)
        pixels = np.empty((height, width, 4), dtype=np.uint8)
        pixels[..., :3] = colour.astype(np.uint8)
        pixels[..., 3] = np.round(ink * 255).astype(np.uint8)
        return Image.fromarray(pixels, mode="RGBA"), tuple(kinds), "png", turn

    grey = background_level + (ink_level - background_level) * ink
    if rng.random() < NOISY_SHARE:
        kinds.append("noisy")
        grey = grey + rng.normal(0, rng.uniform(0.01, MAX_NOISE), grey.shape).astype(np.float32)
    grey = np.clip(grey, 0, 1)
    if rng.random() < COLOURED_SHARE:
        kinds.append("colour")
        tint = rng.uniform(0.8, 1.2, 3)  # the same brightness, tinted
        pixels = np.clip(grey[..., None] * tint * 255, 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels, mode="RGB")
    else:
        image = Image.fromarray(np.round(grey * 255).astype(np.uint8), mode="L")
    if rng.random() < JPEG_SHARE:
        kinds.append("jpeg")
        return image, tuple(kinds), "jpg", turn
    return image, tuple(kinds), "png", turn


def photo_of(digit: np.ndarray, size: tuple[int, int] = (3000, 2000), at: tuple[int, int] = (500, 1700)) -> bytes:
    """A JPEG phone photo of `digit`: written dark on light paper of `size` (width, height), its ink 700x1100
    pixels with its top left corner at `at` (row, column), with sensor noise."""
    import io

    rows, cols = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
    ink = Image.fromarray(digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]).resize(
        (700, 1100), Image.Resampling.BICUBIC
    )
    paper = np.full((size[1], size[0]), 215.0)
    paper[at[0] : at[0] + 1100, at[1] : at[1] + 700] -= np.asarray(ink, dtype=np.float64) * 0.75
    paper += np.random.default_rng(0).normal(0, 4, paper.shape)
    photo = io.BytesIO()
    Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8)).save(photo, format="JPEG", quality=90)
    return photo.getvalue()
