"""Printed digits: font glyphs of various weights, redrawn the way people bring digits (a seeded set).

Each glyph is rendered from one of the fonts matplotlib ships (DejaVu, STIX and
Computer Modern: sans, serif, mono, italic, bold; the only fonts every
install of this project has), at its designed weight or thinned to a hairline
or thickened to a heavy black, then placed on a canvas exactly as
`user_digits.draw_user_digit` places an MNIST digit: off-centre, turned a
little, either polarity, noise, specks, RGBA, JPEG. The same seed gives the
same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from user_digits import draw_user_digit

FONT_FOLDER = Path(matplotlib.get_data_path()) / "fonts" / "ttf"

# The fonts with the ten lining digits. Left out: DejaVu's Display faces and STIXNonUni/STIXSiz (no digits),
# cmex10 and cmsy10 (symbols at the digits' code points), cmmi10 (old-style figures: 3, 4, 5, 7, 9 descend).
FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmss10.ttf",
    "cmti10.ttf",
    "cmtt10.ttf",
)
GLYPH_HEIGHT = 160  # pixels: the glyph is rendered this tall (4x finer for the weight change), then placed
SUPERSAMPLING = 4
DESIGNED_SHARE = 0.4  # at the font's own weight; the rest thinned or thickened
# Stroke width as a fraction of the glyph's height, for the re-weighted glyphs. MNIST's digits: 0.15 median,
# 0.11-0.22 for 90% of them (measured as below); the fonts above: 0.07 (cmti10) to 0.23 (DejaVu Sans Bold).
HAIRLINE, HEAVY = 0.035, 0.25


@dataclass(frozen=True)
class FontDigit:
    """One image of the set: where it is, its label, its font and weight, how it was drawn."""

    path: Path
    label: int
    font: str
    weight: str  # "designed", "thinned" or "thickened"
    stroke: float  # stroke width / glyph height, as rendered
    kinds: tuple[str, ...]
    turn_degrees: float


def stroke_fraction(mask: np.ndarray) -> float:
    """Stroke width of a binary glyph as a fraction of its height: 2 x area / outline (a long stroke's width)."""
    from scipy import ndimage

    outline = mask & ~ndimage.binary_erosion(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    return float(2 * mask.sum() / outline.sum() / (rows[-1] - rows[0] + 1))


def render_glyph(font_file: str, digit: int, stroke: float | None = None) -> tuple[np.ndarray, float, float]:
    """(ink, designed, drawn): the glyph as uint8 ink on 0, about GLYPH_HEIGHT tall, re-weighted to `stroke`
    (None: as designed), with its designed and its drawn stroke width as fractions of its height.

    The weight moves the outline by the same distance everywhere (a Euclidean distance
    transform of the glyph rendered 4x finer), as a bolder or lighter cut of a font does.
    """

    size = GLYPH_HEIGHT * SUPERSAMPLING
    font = ImageFont.truetype(str(FONT_FOLDER / font_file), size)
    left, top, right, bottom = map(int, font.getbbox(str(digit)))  # FreeType's whole pixels, typed as floats
    margin = size // 4  # room to thicken
    canvas = Image.new("L", (right - left + 2 * margin, bottom - top + 2 * margin), 0)
    ImageDraw.Draw(canvas).text((margin - left, margin - top), str(digit), font=font, fill=255)
    mask = np.asarray(canvas) >= 128
    designed = stroke_fraction(mask)
    if stroke is not None:
        height = np.flatnonzero(mask.any(axis=1)).size
        mask = _reweighted(mask, (stroke - designed) * height / 2)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    mask = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    glyph = Image.fromarray(mask.astype(np.uint8) * 255)
    small = glyph.resize(
        (max(1, round(glyph.width / SUPERSAMPLING)), max(1, round(glyph.height / SUPERSAMPLING))), Image.Resampling.BOX
    )  # anti-aliased, as a font renderer draws edges
    return np.asarray(small), designed, stroke_fraction(mask)


def _reweighted(mask: np.ndarray, shift: float) -> np.ndarray:
    """The glyph with its outline moved `shift` pixels out (+) or in (-), or less where that would change its shape.

    A serif's hairlines vanish when a stem thins by half its width, and a bold 8's counters close: the
    move stops short of the first change in the glyph's pieces or holes (found by bisection), so
    every re-weighted glyph is still the digit it was.
    """
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(~mask if shift > 0 else mask)

    def moved(by: float) -> np.ndarray:
        return distance <= by if shift > 0 else distance > by

    def topology(glyph: np.ndarray) -> tuple[int, int]:
        pieces = ndimage.label(glyph, structure=np.ones((3, 3)))[1]
        holes = ndimage.label(~glyph)[1] - 1  # the background around the glyph is one region
        return pieces, holes

    wanted = topology(mask)
    low, high = 0.0, abs(shift)
    if topology(moved(high)) == wanted:
        return moved(high)
    for _ in range(10):
        middle = (low + high) / 2
        low, high = (middle, high) if topology(moved(middle)) == wanted else (low, middle)
    return moved(low) if low > 0 else mask


def write_font_digits(
    directory: str | Path, seed: int, count: int, max_side: int | None = None, fonts: tuple[str, ...] = FONTS
) -> list[FontDigit]:
    """Write `count` printed digits into `directory`, each on a canvas as people bring them; same seed, same files."""
    rng = np.random.default_rng(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for number in range(count):
        label = int(rng.integers(0, 10))
        font_file = fonts[int(rng.integers(0, len(fonts)))]
        target = None if rng.random() < DESIGNED_SHARE else float(rng.uniform(HAIRLINE, HEAVY))
        ink, designed, stroke = render_glyph(font_file, label, target)
        weight = "designed" if target is None else "thickened" if target > designed else "thinned"
        image, kinds, extension, turn = draw_user_digit(ink, rng, max_side)
        path = directory / f"{number:05d}_{label}.{extension}"
        if extension == "jpg":
            image.save(path, quality=int(rng.integers(70, 96)))
        else:
            image.save(path)
        written.append(FontDigit(path, label, Path(font_file).stem, weight, round(stroke, 3), kinds, round(turn, 2)))
    return written
