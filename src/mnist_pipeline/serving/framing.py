"""Any image of one digit framed the way MNIST framed its digits: (28, 28) uint8, light digit on black.

MNIST's authors cropped each digit to its bounding box, scaled it with
anti-aliasing to fit a 20x20 box keeping its aspect ratio, and placed it in
the 28x28 frame so that its centre of mass sits at the centre. The model has
only ever seen digits framed that way; `frame_digit` does the same to a scan,
a photo or a drawing, after working out what is background and what is ink.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from mnist_pipeline.errors import PipelineError

# The formats the README names: nothing else reaches a decoder (Pillow would otherwise try some forty, EPS
# through Ghostscript, and fuzzing found its DDS and IM readers raising errors no one catches).
FORMATS = ("PNG", "JPEG")
# Refused from the header, before anything is decoded: a 164 kB PNG can declare 13000x13000 pixels, and
# decoding and framing it took the server to 1.5 GB. A PNG, or a JPEG of several scans (progressive), is
# decoded at full size: at most 16 million pixels, 75-140 MB while it is decoded and framed (a progressive
# CMYK JPEG's coefficients are the most). A JPEG of one scan is decoded a few rows at a time, at 1/8 scale
# when large: a phone's 24-64 Mpx photo costs under 40 MB. (docs/serve.md, "Hostile input", measures them.)
MAX_PIXELS = 16_000_000
MAX_JPEG_PIXELS = 64_000_000  # a JPEG of one scan
# A progressive JPEG repeats its whole image in each scan, and a scan can be 14 bytes: 1000 of them took 1.2 s
# to decode on a 2000x2000 image, a 5 MB file could take hours. Encoders write 10 or fewer.
MAX_JPEG_SCANS = 100
FRAME = 28  # MNIST's frame, pixels per side
BOX = 20  # the box the digit is scaled into, pixels per side
WORKING_SIDE = 1024  # larger images are reduced to about this before any float work
REDUCE_STRIP_ROWS = 256  # rows reduced at a time (see _reduced)
BORDER_FRACTION = 0.03  # the ring that tells the background, as a fraction of the shorter side (at least 1 px)
NOISE_SIGMAS = 3.0  # ink must stand this many noise deviations (of the border) off the background
MIN_CONTRAST = 0.1  # the ink must differ from the background by this fraction of the full scale
MASK_LEVEL = 0.3  # a pixel belongs to a stroke when its ink is this fraction of the strongest ink
EDGE_LEVEL = 0.1  # the box is measured down to this fraction: MNIST's boxes include anti-aliased edges
SPECK_FRACTION = 0.05  # a mark with less ink than this fraction of the digit's largest stroke is a speck
JOIN_MARGIN = 0.25  # marks within this fraction of the digit's size of it are pieces of it
OTHER_DIGIT_MASS = 0.3  # a separate mark with this much of the digit's ink ...
OTHER_DIGIT_HEIGHT = 0.5  # ... and this much of its height is a second digit
# ... also when it stands close, if it stands beside the digit, not within its columns: its columns overlap
# the digit's by less than this fraction of the narrower of the two (a 4 drawn in two strokes overlaps fully) ...
BESIDE_OVERLAP = 0.3
FAINT_LEVEL = 0.05  # ... if no faint ink (this fraction of the strongest) joins them ...
# ... and if together they are at least this much wider than tall: two digits side by side are (a printed
# digit is 0.45-0.8 times as wide as tall, a 1 less), the two halves of a hairline 0 whose thin top and bottom
# were lost in noise are not.
PAIR_ASPECT = 1.0
RESAMPLING = Image.Resampling.LANCZOS  # into the 20x20 box: anti-aliased, sharp
MIN_DIGIT_FRACTION = 0.03  # a digit spans at least this fraction of the longer side (and 3 px): less is noise
# MNIST's pen: the median stroke width of MNIST's training digits as a fraction of their longer side
# (pen_width), measured by benchmarks/predict_framing.py ("mnist_pen" in its results). Every digit is
# redrawn with it before it is scaled: a hairline or a heavy font, a fine pen or a marker, look to the
# model like the digits it learned (docs/predict.md, "Printed digits").
MNIST_PEN = 0.149
PEN_SIDE = 4 * BOX  # the digit's longer side, pixels, while its pen is measured and redrawn
# EXIF orientations (phone photos are stored sideways and tagged) and the transpose that undoes each.
EXIF_ORIENTATION_TAG = 0x0112
EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


# MAX_PIXELS is checked here, from the header, far below Pillow's own warning (89 Mpx): its warning would only
# add a line on stderr for an image that is refused anyway.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class UnreadableImage(PipelineError):
    """The file is not a PNG or JPEG this can decode: another kind of file, empty, broken, or too many pixels."""


class NotOneDigit(PipelineError):
    """The image holds no digit, or more than one."""


def load_digit(source: str | Path | bytes | bytearray, name: str | None = None) -> np.ndarray:
    """The digit in an image file (a path, or its bytes), framed as MNIST frames its digits: (28, 28) uint8.

    Errors name the file as `name`, else as its path.
    """
    name = name or str(source)
    return frame_digit(read_image(source, name), name=name)


def read_image(source: str | Path | bytes | bytearray, name: str | None = None) -> Image.Image:
    """Decode a PNG or JPEG file (a path, or its bytes) at no more than about WORKING_SIDE pixels a side, upright as
    its EXIF says.

    The header is checked first: another format, more pixels than MAX_PIXELS (MAX_JPEG_PIXELS for a
    JPEG of one scan) or a JPEG of more than MAX_JPEG_SCANS scans is refused before anything is
    decoded. A JPEG is decoded at a reduced scale directly (`draft`); a PNG is decoded once at full
    size, in its own mode, and reduced by averaging blocks, so a large image is held at full
    resolution once, never as floats. Any error of the decoder is an UnreadableImage, in one line.
    """
    name = name or str(source)
    with _opened(source, name) as stream:
        try:
            return _decoded(stream, name)
        except PipelineError:
            raise
        except Image.DecompressionBombError:  # more than Pillow's own limit (179 Mpx), refused in Image.open
            refused = 2 * Image.MAX_IMAGE_PIXELS  # type: ignore[operator]  # never None here: None turns the check off
            raise UnreadableImage(f"{name}: too many pixels (more than {refused:,}); scale the image down") from None
        except Image.UnidentifiedImageError:
            # Pillow's own words name a path, or an in-memory buffer's address: say it the same way for both.
            raise UnreadableImage(f"{name}: not a readable image ({_unidentified(stream)})") from None
        except Exception as exc:  # whatever a decoder raises: SyntaxError for a broken PNG, and more
            raise UnreadableImage(f"{name}: not a readable image ({_one_line(exc)})") from None


def _opened(source: str | Path | bytes | bytearray, name: str) -> BinaryIO:
    """`source` as a binary stream (its bytes, or the file opened); a file that cannot be opened: one line."""
    if isinstance(source, (bytes, bytearray)):
        return io.BytesIO(source)
    try:
        return open(source, "rb")
    except FileNotFoundError:
        raise PipelineError(f"{name}: no such file") from None
    except OSError as exc:
        raise UnreadableImage(f"{name}: not a readable image ({exc.strerror or exc})") from None


def _decoded(stream, name: str) -> Image.Image:
    if stream.seek(0, io.SEEK_END) == 0:
        raise UnreadableImage(f"{name}: not a readable image (the file is empty)")
    stream.seek(0)
    image: Image.Image = Image.open(stream, formats=FORMATS)  # an ImageFile until it is reduced
    width, height = image.size
    is_jpeg = image.format in ("JPEG", "MPO")  # MPO: a phone's JPEG with a second picture inside
    scans = _jpeg_scans(stream) if is_jpeg else 0
    if scans > MAX_JPEG_SCANS:
        raise UnreadableImage(
            f"{name}: not a readable image ({scans} JPEG scans, more than {MAX_JPEG_SCANS}; "
            "save it again as a PNG or an ordinary JPEG)"
        )
    limit = MAX_JPEG_PIXELS if scans == 1 else MAX_PIXELS
    if width * height > limit:
        kind = " in a JPEG of several scans" if scans > 1 else ""
        raise UnreadableImage(
            f"{name}: too many pixels ({width}x{height}{kind}, at most {limit / 1e6:g} million); scale the image down"
        )
    orientation = image.getexif().get(EXIF_ORIENTATION_TAG)
    if is_jpeg:
        image.draft("L", _reduced_size(image.size))  # decode at 1/2..1/8 scale; RGB straight to luminance
    image.load()
    image = _reduced(_common_mode(image))
    if orientation in EXIF_TRANSPOSE:
        image = image.transpose(EXIF_TRANSPOSE[orientation])
    return image


def _unidentified(stream) -> str:
    """Why Pillow knew no format for the file: not PNG or JPEG at all, or one whose header is broken."""
    stream.seek(0)
    start = stream.read(8)
    # Pillow says only that no format opened it, also when a PNG's header fails its checksum.
    if start == b"\x89PNG\r\n\x1a\n":
        return "a broken PNG file: its header is damaged"
    if start.startswith(b"\xff\xd8"):
        return "a broken JPEG file: its header is damaged"
    return "not a PNG or JPEG file"


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _jpeg_scans(stream) -> int:
    """How many scans a JPEG's image has, counted from its markers without decoding.

    One scan is decoded a few rows at a time; several (progressive, or one colour at a time) need the
    whole image's coefficients in memory, and each is a pass over it. The segments are walked from the
    start, so a thumbnail inside the EXIF, scans and all, is skipped with its segment; the walk ends at
    the image's end, or where the markers stop making sense (the decoder then says what is wrong).
    """
    position = stream.tell()
    stream.seek(0)
    data = stream.read()
    stream.seek(position)
    at, scans = 2, 0  # past the start-of-image marker
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF:  # a fill byte before the marker
            at += 1
            continue
        if marker == 0xD9:  # the end of the image
            break
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
        if marker != 0xDA:  # start of scan
            continue
        scans += 1
        while (at := data.find(b"\xff", at)) != -1 and at + 1 < len(data):  # the scan's coded data
            following = data[at + 1]
            if following != 0x00 and not 0xD0 <= following <= 0xD7:  # not a stuffed FF, not a restart marker
                break
            at += 2
        else:
            break
    return scans


def frame_digit(image: Image.Image, name: str = "image") -> np.ndarray:
    """Frame the one digit in `image` as MNIST did: (28, 28) uint8, light digit on black, centred by mass.

    An image that is already framed that way (28x28, black background, the
    digit 19-20 pixels on its longer side, centred by mass) is returned as is.
    Raises NotOneDigit, naming `name`, when the image is blank or holds more
    than one digit (specks and small marks are ignored, see _crop_to_digit).
    """
    grey = _flatten(_reduced(_common_mode(image)))
    if grey.shape == (FRAME, FRAME):
        pixels = np.round(grey * 255).astype(np.uint8)
        if is_mnist_framed(pixels):
            return pixels
    ink = _ink(grey, name)
    digit = _crop_to_digit(ink, name)
    return _place_in_frame(_with_mnist_pen(digit))


def is_mnist_framed(pixels: np.ndarray) -> bool:
    """Whether (28, 28) uint8 pixels already look like an MNIST digit: black border, 19-20 px box, centred."""
    if pixels.shape != (FRAME, FRAME) or np.median(_border(pixels)) != 0 or pixels.max() < 128:
        return False
    rows = np.flatnonzero(pixels.any(axis=1))
    cols = np.flatnonzero(pixels.any(axis=0))
    longer_side = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
    centre_row, centre_col = _centre_of_mass(pixels.astype(np.float64))
    # MNIST's own digits: longer side 19 or 20, centre of mass within half a pixel of (14, 14).
    return BOX - 1 <= longer_side <= BOX and abs(centre_row - FRAME / 2) <= 1 and abs(centre_col - FRAME / 2) <= 1


def _reduced_size(size: tuple[int, int]) -> tuple[int, int]:
    scale = min(1.0, WORKING_SIDE / max(size))
    return max(1, math.ceil(size[0] * scale)), max(1, math.ceil(size[1] * scale))


def _reduced(image: Image.Image) -> Image.Image:
    """Block averages (anti-aliased) down to about WORKING_SIDE a side, a strip of rows at a time.

    Pillow reduces an image with alpha through a premultiplied copy of all of it: for a 16 Mpx RGBA
    PNG, 64 MB more. A strip's copy is small, and strips a whole number of blocks high give the
    same averages as the whole image.
    """
    factor = math.ceil(max(image.size) / WORKING_SIDE)
    if factor == 1:
        return image
    width, height = image.size
    reduced = Image.new(image.mode, (math.ceil(width / factor), math.ceil(height / factor)))
    rows = factor * max(1, REDUCE_STRIP_ROWS // factor)
    for top in range(0, height, rows):
        reduced.paste(image.crop((0, top, width, min(height, top + rows))).reduce(factor), (0, top // factor))
    return reduced


def _common_mode(image: Image.Image) -> Image.Image:
    """The image as L, LA, RGB or RGBA (16-bit grey scaled to 8 bits, palettes expanded)."""
    if image.mode in ("L", "LA", "RGB", "RGBA"):
        return image
    if image.mode.startswith("I;16"):  # 16-bit grey, in integers (Pillow cannot reduce I;16)
        values = np.asarray(image)
        # Levels over the full 16 bits keep their high byte; 0-255 levels, as some programs write even in a
        # 16-bit file, are taken as they are (their high byte is 0: a blank image).
        return Image.fromarray((values >> 8 if values.max() > 255 else values).astype(np.uint8), mode="L")
    if image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        full_scale = 65535 if values.max() > 255 else 255
        return Image.fromarray(np.clip(values / full_scale * 255, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "1":
        return image.convert("L")
    has_alpha = "A" in image.mode or "a" in image.mode or "transparency" in image.info
    if image.mode == "P":  # to grey at once: a full-size copy of 1 or 2 bytes a pixel, not RGB(A)'s 3 or 4
        return image.convert("LA" if has_alpha else "L")
    return image.convert("RGBA" if has_alpha else "RGB")


def _flatten(image: Image.Image) -> np.ndarray:
    """Grey levels in [0, 1], transparency flattened onto a background that contrasts with the ink.

    A drawing exported with a transparent background may hold its digit only in
    the alpha channel (black everywhere, opaque where drawn); flattened onto
    black it would vanish, so the background is white under dark ink and black
    under light ink.
    """
    if image.mode in ("L", "RGB"):
        return np.asarray(image.convert("L"), dtype=np.float32) / 255
    colour = image.convert("RGB" if image.mode == "RGBA" else "L")
    luminance = np.asarray(colour.convert("L"), dtype=np.float32) / 255
    alpha = np.asarray(image.getchannel("A"), dtype=np.float32) / 255
    opacity = float(alpha.sum())
    if opacity == 0:
        return np.zeros_like(luminance)  # fully transparent: blank
    ink_level = float((luminance * alpha).sum()) / opacity
    background = 1.0 if ink_level < 0.5 else 0.0
    return luminance * alpha + background * (1 - alpha)


def _border(pixels: np.ndarray) -> np.ndarray:
    width = max(1, round(min(pixels.shape) * BORDER_FRACTION))
    return np.concatenate(
        [
            pixels[:width].ravel(),
            pixels[-width:].ravel(),
            pixels[width:-width, :width].ravel(),
            pixels[width:-width, -width:].ravel(),
        ]
    )


def _ink(grey: np.ndarray, name: str) -> np.ndarray:
    """How much ink each pixel holds, 0 for background: polarity and level from the border."""
    border = _border(grey)
    background = float(np.median(border))
    noise = 1.4826 * float(np.median(np.abs(border - background)))  # the border's deviation, robust to a stroke
    floor = NOISE_SIGMAS * noise
    lighter = np.clip(grey - background - floor, 0, None)
    darker = np.clip(background - grey - floor, 0, None)
    # Polarity: which way the pixels depart from the border's level, not whether the mean is bright.
    ink = darker if darker.sum() > lighter.sum() else lighter
    if ink.max() < MIN_CONTRAST:
        raise NotOneDigit(f"{name}: no digit found (the image is blank)")
    return ink


def _crop_to_digit(ink: np.ndarray, name: str) -> np.ndarray:
    """The digit's box cut from `ink`, scaled to [0, 1]; specks are dropped, a second digit is refused."""
    from scipy import ndimage  # only the framing needs it; predict.py pays for it, the pipeline does not

    strokes = ink > MASK_LEVEL * ink.max()
    labels, count = ndimage.label(strokes, structure=np.ones((3, 3)))
    boxes = ndimage.find_objects(labels)
    masses = ndimage.sum(ink, labels, index=np.arange(1, count + 1))
    largest = int(np.argmax(masses))
    main_box = boxes[largest]
    main_height = main_box[0].stop - main_box[0].start
    main_size = max(main_height, main_box[1].stop - main_box[1].start)
    if main_size < max(3, MIN_DIGIT_FRACTION * max(ink.shape)):
        raise NotOneDigit(f"{name}: no digit found (the image is blank)")

    def digit_sized(index: int) -> bool:
        box = boxes[index]
        return (
            masses[index] >= OTHER_DIGIT_MASS * masses[largest]
            and box[0].stop - box[0].start >= OTHER_DIGIT_HEIGHT * main_height
        )

    faint = None  # labels of the faint ink, computed the first time a digit-sized mark stands beside the digit

    def beside(index: int, top: int, bottom: int, left: int, right: int) -> bool:
        """Whether digit-sized mark `index` stands beside the digit (its box so far) as another digit would."""
        nonlocal faint
        box = boxes[index]
        overlap = min(right, box[1].stop) - max(left, box[1].start)
        if overlap >= BESIDE_OVERLAP * min(right - left, box[1].stop - box[1].start):
            return False
        if faint is None:
            faint = ndimage.label(ink > FAINT_LEVEL * ink.max(), structure=np.ones((3, 3)))[0]
        if faint[_any_pixel(labels, index + 1, box)] == faint[_any_pixel(labels, largest + 1, main_box)]:
            return False
        width = max(right, box[1].stop) - min(left, box[1].start)
        height = max(bottom, box[0].stop) - min(top, box[0].start)
        return width >= PAIR_ASPECT * height

    # Grow the digit from its largest stroke: marks near it are its pieces (a 5's detached bar), unless a
    # mark as large as a digit stands beside it ("42" typed with the glyphs a few pixels apart).
    members = {largest}
    top, bottom, left, right = main_box[0].start, main_box[0].stop, main_box[1].start, main_box[1].stop
    grown = True
    while grown:
        grown = False
        margin = JOIN_MARGIN * main_size
        for index, box in enumerate(boxes):
            if index in members or masses[index] < SPECK_FRACTION * masses[largest]:
                continue
            if (
                box[0].start < bottom + margin
                and box[0].stop > top - margin
                and box[1].start < right + margin
                and box[1].stop > left - margin
                and not (digit_sized(index) and beside(index, top, bottom, left, right))
            ):
                members.add(index)
                top, bottom = min(top, box[0].start), max(bottom, box[0].stop)
                left, right = min(left, box[1].start), max(right, box[1].stop)
                grown = True
    others = [index for index in range(count) if index not in members and digit_sized(index)]
    if others:
        raise NotOneDigit(f"{name}: {len(others) + 1} digits found; give one digit per image")

    # Measure the box down to the strokes' faint edges, as MNIST's boxes include them.
    grow = max(1, round(0.05 * main_size))
    top, left = max(0, top - grow), max(0, left - grow)
    bottom, right = min(ink.shape[0], bottom + grow), min(ink.shape[1], right + grow)
    kept = np.isin(labels[top:bottom, left:right], [m + 1 for m in members]) | ~strokes[top:bottom, left:right]
    digit = np.where(kept, ink[top:bottom, left:right], 0)
    edges = digit > EDGE_LEVEL * digit.max()
    rows, cols = np.flatnonzero(edges.any(axis=1)), np.flatnonzero(edges.any(axis=0))
    digit = digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return np.clip(digit / digit.max(), 0, 1)


def _any_pixel(labels: np.ndarray, label: int, box: tuple[slice, slice]) -> tuple[int, int]:
    """(row, col) of one pixel of mark `label`, found inside its box."""
    rows, cols = np.nonzero(labels[box] == label)
    return box[0].start + int(rows[0]), box[1].start + int(cols[0])


def pen_width(digit: np.ndarray) -> float:
    """The pen a digit cropped to its box was drawn with, as a fraction of its longer side; 0 without ink.

    2 x area / outline of its strokes (MASK_LEVEL of the strongest ink) with the digit PEN_SIDE
    pixels on its longer side: a stroke of width w and length L has area w L and outline about 2 L.
    """
    from scipy import ndimage

    working = _at_pen_side(digit)
    if working.max() <= 0:
        return 0.0
    strokes = working > MASK_LEVEL * working.max()
    outline = strokes & ~ndimage.binary_erosion(strokes)
    return float(2 * strokes.sum() / outline.sum() / PEN_SIDE)


def _at_pen_side(digit: np.ndarray) -> np.ndarray:
    height, width = digit.shape
    scale = PEN_SIDE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(digit.astype(np.float32), mode="F").resize(size, RESAMPLING))


def _with_mnist_pen(digit: np.ndarray) -> np.ndarray:
    """The cropped digit (ink in [0, 1]) redrawn with MNIST's pen (MNIST_PEN), or as it is when its pen is close.

    At PEN_SIDE pixels on its longer side, the outline of its strokes moves out or in by the same
    distance everywhere, as a bolder or a finer pen would draw it. The move stops short of any
    change in the digit's pieces or holes (a bold 8's counters closing, a serif's hairline
    vanishing): bisection on that distance.
    """
    from scipy import ndimage

    measured = pen_width(digit)
    shift = (MNIST_PEN - measured) * PEN_SIDE / 2  # pixels the outline moves out (+) or in (-)
    if measured == 0 or abs(shift) < 0.5:
        return digit
    room = PEN_SIDE // 4
    working = np.pad(_at_pen_side(digit), room)  # room for a thicker pen
    strokes = working > MASK_LEVEL * working.max()
    distance = ndimage.distance_transform_edt(~strokes if shift > 0 else strokes)

    def drawn(by: float) -> np.ndarray:
        return distance <= by if shift > 0 else distance > by

    def shape(mask: np.ndarray) -> tuple[int, int]:
        pieces = ndimage.label(mask, structure=np.ones((3, 3)))[1]
        return pieces, ndimage.label(~mask)[1] - 1  # the background around the digit is one region

    wanted, moved = shape(strokes), abs(shift)
    if shape(drawn(moved)) != wanted:
        kept, lost = 0.0, moved
        for _ in range(8):
            middle = (kept + lost) / 2
            kept, lost = (middle, lost) if shape(drawn(middle)) == wanted else (kept, middle)
        moved = kept
    if moved < 0.5:
        return digit
    redrawn = drawn(moved).astype(np.float32)
    rows, cols = np.flatnonzero(redrawn.any(axis=1)), np.flatnonzero(redrawn.any(axis=0))
    return redrawn[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _place_in_frame(digit: np.ndarray) -> np.ndarray:
    """Scale into BOX x BOX keeping the aspect ratio, then centre by mass in FRAME x FRAME."""
    height, width = digit.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    scaled = np.asarray(Image.fromarray(digit.astype(np.float32), mode="F").resize(size, RESAMPLING))
    scaled = np.clip(scaled, 0, None)  # Lanczos rings slightly below zero beside strokes
    scaled = np.clip(scaled / scaled.max(), 0, 1)  # thin strokes fade when shrunk: their cores back to full ink
    centre_row, centre_col = _centre_of_mass(scaled)
    # MNIST's centres of mass all lie within half a pixel of (14, 14): integer shifts, no resampling.
    top = min(max(0, math.floor(FRAME / 2 + 0.5 - centre_row)), FRAME - size[1])
    left = min(max(0, math.floor(FRAME / 2 + 0.5 - centre_col)), FRAME - size[0])
    frame = np.zeros((FRAME, FRAME), dtype=np.float32)
    frame[top : top + size[1], left : left + size[0]] = scaled
    return np.round(frame * 255).astype(np.uint8)


def _centre_of_mass(pixels: np.ndarray) -> tuple[float, float]:
    total = pixels.sum()
    rows = np.arange(pixels.shape[0])
    cols = np.arange(pixels.shape[1])
    return float(pixels.sum(axis=1) @ rows / total), float(pixels.sum(axis=0) @ cols / total)
