"""Hostile and broken image files, made on the spot: what an attacker or a careless user sends `predict.py`.

Small files that declare huge images (PNG, JPEG, WebP, TIFF), files that break their own format
(a wrong chunk length, a bad checksum, cut short), a JPEG of thousands of scans, formats the
README does not name (EPS, DDS, IM, ...), the largest images accepted in their costliest modes,
and multipart bodies of many parts. tests/serving/test_framing.py and tests/serving/test_server.py check each kind;
benchmarks/serve_hostile.py sends them all to the server and measures its memory and answer times.
Nothing is random: the same call gives the same bytes.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageDraw

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples a pixel


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def digit(size: tuple[int, int] = (120, 120), mode: str = "L") -> Image.Image:
    """A dark 7 on white: a valid image to break or to save in another format."""
    image = Image.new("L", size, 255)
    width, height = size
    ImageDraw.Draw(image).line(
        [(width * 0.3, height * 0.2), (width * 0.7, height * 0.2), (width * 0.45, height * 0.8)],
        fill=0,
        width=max(2, width // 16),
    )
    return image.convert(mode)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    """(offset, type, length) of each chunk of a PNG file."""
    chunks, at = [], len(PNG_SIGNATURE)
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        chunks.append((at, kind, length))
        at += 12 + length
    return chunks


def flat_png(
    width: int, height: int, colour_type: int = 3, bit_depth: int = 8, interlace: int = 0, transparent: bool = False
) -> bytes:
    """A valid PNG of one colour (every sample 0), written without holding the image: small however large it is.

    Colour type 3 (palette) with a one-entry palette; `transparent` adds a tRNS chunk. `interlace`
    1 is Adam7: seven passes, each a smaller image of its own rows.
    """
    bits = PNG_CHANNELS[colour_type] * bit_depth
    passes = (
        [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
        if interlace
        else [(0, 0, 1, 1)]
    )
    compressor = zlib.compressobj(9)
    parts = []
    for left, top, step_x, step_y in passes:
        columns, rows = -(-(width - left) // step_x), -(-(height - top) // step_y)
        if columns <= 0 or rows <= 0:
            continue
        row = bytes(1 + (columns * bits + 7) // 8)  # filter byte 0, then zero samples
        rows_at_once = max(1, (1 << 22) // len(row))
        for start in range(0, rows, rows_at_once):
            parts.append(compressor.compress(row * min(rows_at_once, rows - start)))
    parts.append(compressor.flush())
    chunks = [png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, interlace))]
    if colour_type == 3:
        chunks.append(png_chunk(b"PLTE", bytes(3)))
        if transparent:
            chunks.append(png_chunk(b"tRNS", b"\x00"))
    chunks += [png_chunk(b"IDAT", b"".join(parts)), png_chunk(b"IEND", b"")]
    return PNG_SIGNATURE + b"".join(chunks)


def declaring_png(width: int, height: int, colour_type: int = 6, bit_depth: int = 8) -> bytes:
    """A PNG whose header declares width x height, followed by a few rows' worth of data: 100-odd bytes."""
    row = bytes(1 + (width * PNG_CHANNELS[colour_type] * bit_depth + 7) // 8)
    chunks = [png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0))]
    if colour_type == 3:
        chunks.append(png_chunk(b"PLTE", bytes(3)))
    chunks += [png_chunk(b"IDAT", zlib.compress(row * 4, 9)), png_chunk(b"IEND", b"")]
    return PNG_SIGNATURE + b"".join(chunks)


def with_chunk_length(data: bytes, kind: bytes, length: int) -> bytes:
    """The PNG with the length field of its first `kind` chunk replaced: the chunk no longer ends where it says."""
    at = next(offset for offset, found, _ in png_chunks(data) if found == kind)
    return data[:at] + struct.pack(">I", length) + data[at + 4 :]


def with_bad_checksum(data: bytes, kind: bytes = b"IHDR") -> bytes:
    at, _, length = next(chunk for chunk in png_chunks(data) if chunk[1] == kind)
    crc_at = at + 8 + length
    return data[:crc_at] + bytes(b ^ 0xFF for b in data[crc_at : crc_at + 4]) + data[crc_at + 4 :]


def declaring_jpeg(width: int, height: int, progressive: bool = False, mode: str = "RGB") -> bytes:
    """A small valid JPEG whose frame header (SOF) is rewritten to declare width x height: its data ends long before."""
    data = bytearray(encoded(Image.new(mode, (64, 64), (128,) * len(mode)), "JPEG", progressive=progressive))
    at = 2
    while data[at + 1] not in (0xC0, 0xC1, 0xC2):  # the frame header: baseline, extended or progressive
        at += 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)  # after marker, length and precision
    return bytes(data)


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(start, end, marker) of each segment of a JPEG, a scan's coded data included in its segment."""
    segments, at = [], 2
    while at < len(data):
        marker = data[at + 1]
        if marker == 0xD9:  # end of image
            segments.append((at, at + 2, marker))
            break
        end = at + 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
        if marker == 0xDA:  # the coded data runs to the next marker that is not a stuffed FF or a restart
            while not (data[end] == 0xFF and data[end + 1] != 0x00 and not 0xD0 <= data[end + 1] <= 0xD7):
                end += 1
        segments.append((at, end, marker))
        at = end
    return segments


def many_scans_jpeg(side: int = 2000, copies: int = 5000) -> bytes:
    """A progressive JPEG whose first AC scan is repeated `copies` times: 14 bytes each, a pass over the image each.

    libjpeg warns of a repeated scan and decodes it again: 1000 copies on 2000x2000 took 1.2 s
    before JPEGs of many scans were refused (docs/serve.md).
    """
    data = encoded(Image.new("L", (side, side), 128), "JPEG", progressive=True)
    for start, end, marker in jpeg_segments(data):
        components = data[start + 4]
        spectral_start, _, approximation = data[start + 5 + 2 * components : start + 8 + 2 * components]
        if marker == 0xDA and spectral_start > 0 and approximation >> 4 == 0:
            return data[:end] + data[start:end] * copies + data[end:]
    raise AssertionError("no first AC scan in Pillow's progressive JPEG")


def declaring_webp(width: int, height: int) -> bytes:
    """A small lossless WebP whose header is rewritten to declare width x height (at most 16384 each)."""
    data = bytearray(encoded(Image.new("RGB", (16, 16), (90, 90, 90)), "WEBP", lossless=True))
    at = data.index(b"VP8L") + 8 + 1  # past the chunk's type, its size and the 0x2F signature
    bits = struct.unpack("<I", data[at : at + 4])[0]
    bits = (bits & ~0x0FFFFFFF) | (width - 1) | (height - 1) << 14
    data[at : at + 4] = struct.pack("<I", bits)
    return bytes(data)


def declaring_float_tiff(width: int, height: int) -> bytes:
    """An uncompressed float32 grey TIFF declaring width x height, one strip, 64 bytes of it present."""
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 32),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 0),
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, width * height * 4),
        (339, 3, 1, 3),
    ]
    ifd_at = 8
    data_at = ifd_at + 2 + 12 * len(entries) + 4
    entries = [(tag, kind, count, data_at if tag == 273 else value) for tag, kind, count, value in entries]
    ifd = (
        struct.pack("<H", len(entries))
        + b"".join(
            struct.pack("<HHI", tag, kind, count)
            + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
            for tag, kind, count, value in entries
        )
        + struct.pack("<I", 0)
    )
    return b"II*\x00" + struct.pack("<I", ifd_at) + ifd + bytes(64)


def eps(width: int = 13000, height: int = 13000) -> bytes:
    """An EPS file: Pillow hands these to Ghostscript, a PostScript interpreter, when it is installed."""
    return (
        f"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 {width} {height}\n%%EndComments\n"
        "newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"
    ).encode()


def noisy_png(side: int = 4000, size: int = 4_900_000) -> bytes:
    """An RGBA PNG of side x side whose top rows are noise, as many as make the file about `size` bytes: the
    largest image accepted, in the largest body accepted (5 MB)."""
    import numpy as np

    pixels = np.zeros((side, side, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    rows = size // (4 * side)
    pixels[:rows] = np.random.default_rng(0).integers(0, 256, (rows, side, 4), dtype=np.uint8)
    return encoded(Image.fromarray(pixels, mode="RGBA"), "PNG", compress_level=1)


def many_parts_body(boundary: str = "b", size: int = 5 * 2**20) -> bytes:
    """A multipart body of `size` bytes made of empty parts (about 400,000 in 5 MB), then the image field."""
    empty = f'--{boundary}\r\nContent-Disposition: form-data; name="x"\r\n\r\n\r\n'.encode()
    closing = f"--{boundary}--\r\n".encode()
    return empty * ((size - len(closing)) // len(empty)) + closing


@dataclass(frozen=True)
class Hostile:
    """One hostile upload: its file name, how to make its bytes, and what the server answers (status)."""

    name: str
    make: Callable[[], bytes]
    status: int
    why: str


# What the server must answer without its memory or time running away: refused from the header (400), broken (400),
# or decoded in full, at the largest sizes accepted and in the costliest modes (422: one colour holds no digit).
HOSTILE_FILES = [
    Hostile(
        "palette-13000.png",
        lambda: flat_png(13000, 13000),
        400,
        "a one-colour palette PNG, 13000x13000 (the issue's 164 kB file)",
    ),
    Hostile("rgba-13000.png", lambda: declaring_png(13000, 13000), 400, "a PNG header declaring 13000x13000 RGBA"),
    Hostile(
        "grey16-60000.png",
        lambda: declaring_png(60000, 60000, 0, 16),
        400,
        "a 16-bit grey PNG header declaring 60000x60000",
    ),
    Hostile(
        "65500.jpg", lambda: declaring_jpeg(65500, 65500), 400, "a JPEG declaring 65500x65500 (over Pillow's own limit)"
    ),
    Hostile("baseline-9000.jpg", lambda: declaring_jpeg(9000, 9000), 400, "a JPEG of one scan declaring 9000x9000"),
    Hostile(
        "baseline-8000.jpg",
        lambda: declaring_jpeg(8000, 8000),
        422,
        "a JPEG of one scan declaring 8000x8000, the most accepted, its data cut short (read as grey)",
    ),
    Hostile(
        "progressive-13000.jpg",
        lambda: declaring_jpeg(13000, 13000, progressive=True),
        400,
        "a progressive JPEG declaring 13000x13000",
    ),
    Hostile(
        "cmyk-13000.jpg",
        lambda: declaring_jpeg(13000, 13000, progressive=True, mode="CMYK"),
        400,
        "a progressive CMYK JPEG declaring 13000x13000",
    ),
    Hostile(
        "16383.webp", lambda: declaring_webp(16383, 16383), 400, "a WebP declaring 16383x16383 (the issue's: 2.6 GB)"
    ),
    Hostile(
        "float-13000.tif",
        lambda: declaring_float_tiff(13000, 13000),
        400,
        "a float TIFF declaring 13000x13000 (the issue's: 5.2 GB)",
    ),
    Hostile("ghostscript.eps", eps, 400, "an EPS file (Ghostscript, where installed)"),
    Hostile(
        "digit.dds", lambda: encoded(digit(mode="RGB"), "DDS"), 400, "a DDS file (fuzzing found NotImplementedError)"
    ),
    Hostile("digit.im", lambda: encoded(digit(), "IM"), 400, "an IM file (fuzzing found TypeError)"),
    Hostile(
        "chunk-length.png",
        lambda: with_chunk_length(encoded(digit(), "PNG"), b"IDAT", 0),
        400,
        "a PNG whose IDAT length is wrong (the issue's 500)",
    ),
    Hostile("checksum.png", lambda: with_bad_checksum(encoded(digit(), "PNG")), 400, "a PNG with a bad IHDR checksum"),
    Hostile("cut.png", lambda: encoded(digit(), "PNG")[:120], 400, "a PNG cut short"),
    Hostile("cut.jpg", lambda: encoded(digit(), "JPEG")[:400], 400, "a JPEG cut short"),
    Hostile("many-scans.jpg", many_scans_jpeg, 400, "a progressive JPEG of 5000 repeated scans, 70 kB"),
    Hostile(
        "palette-alpha-4000.png",
        lambda: flat_png(4000, 4000, transparent=True),
        422,
        "16 Mpx, the most accepted: palette with transparency",
    ),
    Hostile("rgba-4000.png", lambda: flat_png(4000, 4000, colour_type=6), 422, "16 Mpx RGBA"),
    Hostile(
        "interlaced-rgba-4000.png",
        lambda: flat_png(4000, 4000, colour_type=6, interlace=1),
        422,
        "16 Mpx RGBA, interlaced",
    ),
    Hostile("grey16-4000.png", lambda: flat_png(4000, 4000, colour_type=0, bit_depth=16), 422, "16 Mpx 16-bit grey"),
    Hostile("rgba16-4000.png", lambda: flat_png(4000, 4000, colour_type=6, bit_depth=16), 422, "16 Mpx 16-bit RGBA"),
    Hostile(
        "rgb-8000.jpg",
        lambda: encoded(Image.new("RGB", (8000, 8000), (7, 8, 9)), "JPEG"),
        422,
        "64 Mpx, the most accepted in a JPEG of one scan",
    ),
    Hostile(
        "cmyk-6000.jpg",
        lambda: encoded(Image.new("CMYK", (6000, 6000), (7, 8, 9, 10)), "JPEG"),
        422,
        "36 Mpx CMYK JPEG of one scan",
    ),
    Hostile(
        "cmyk-progressive-4000.jpg",
        lambda: encoded(Image.new("CMYK", (4000, 4000), (7, 8, 9, 10)), "JPEG", progressive=True),
        422,
        "16 Mpx progressive CMYK JPEG",
    ),
    Hostile(
        "rgb-progressive-4000.jpg",
        lambda: encoded(Image.new("RGB", (4000, 4000), (7, 8, 9)), "JPEG", progressive=True, subsampling=0),
        422,
        "16 Mpx progressive RGB JPEG, no chroma subsampling",
    ),
]
