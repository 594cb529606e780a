"""Hostile images whose headers claim what the bytes don't hold: tiny files that are expensive to decode.

Each builder writes a file of the format it names with any claimed size, made in bytes without allocating
the image. Where a format compresses well (PNG's deflate), the pixels are really there (zeros), so an
accepted file costs its full decode; elsewhere the data stops after the header and the decoder makes up
the rest (libjpeg fills a JPEG cut short at its end marker, so it still decodes in full). Used by
``make bench-budget`` (:mod:`genart.bench.budget`) and by the property tests of the decoding budget.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

__all__ = [
    "BUILDERS",
    "FORMAT_MAX_SIDE",
    "HostileCase",
    "bmp",
    "corpus",
    "gif",
    "ico",
    "jpeg",
    "png",
    "tiff",
    "webp",
]

#: The largest side each builder's header can claim.
FORMAT_MAX_SIDE = {
    "png": 2**31 - 1,
    "png1": 2**31 - 1,
    "png16": 2**31 - 1,
    "jpeg": 65_535,
    "jpeg_progressive": 65_535,
    "gif": 65_535,
    "tiff": 2**32 - 1,
    "webp": 16_384,
    "bmp": 2**31 - 1,
    "ico": 2**31 - 1,  # the directory says at most 256; an embedded PNG says what it likes
}
#: Above this many raw bytes a PNG gets a header and an empty stream instead of compressed zeros.
_MAX_RAW_PNG = 400 * 2**20


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int, height: int, bit_depth: int = 8, color_type: int = 2, frames: int = 1) -> bytes:
    """A PNG of zeros. ``color_type`` 0 grey, 2 RGB, 3 palette, 6 RGBA; ``frames`` > 1 claims an APNG."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    row = 1 + math.ceil(width * channels * bit_depth / 8)
    out = [
        b"\x89PNG\r\n\x1a\n",
        _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)),
    ]
    if color_type == 3:
        out.append(_chunk(b"PLTE", bytes(3 * 2**bit_depth)))
    if frames > 1:
        out.append(_chunk(b"acTL", struct.pack(">II", frames, 0)))
    if row * height <= _MAX_RAW_PNG:
        compressor = zlib.compressobj(9)
        zero_row = bytes(row)
        rows_per_call = max(1, (1 << 20) // row)
        parts = [
            compressor.compress(zero_row * min(rows_per_call, height - done))
            for done in range(0, height, rows_per_call)
        ]
        idat = b"".join(parts) + compressor.flush()
    else:
        idat = zlib.compress(b"")
    out += [_chunk(b"IDAT", idat), _chunk(b"IEND", b"")]
    return b"".join(out)


def jpeg(width: int, height: int, progressive: bool = False) -> bytes:
    """An 16 x 16 JPEG whose frame header claims ``width`` x ``height``: libjpeg decodes the rest as grey."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 150)).save(buffer, "JPEG", quality=90, progressive=progressive)
    data = bytearray(buffer.getvalue())
    marker = b"\xff\xc2" if progressive else b"\xff\xc0"
    at = data.index(marker)
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif(width: int, height: int, frames: int = 1) -> bytes:
    """A GIF whose screen is ``width`` x ``height``, holding ``frames`` frames of one pixel each."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + bytes(6)  # 2-colour table
    # One pixel: LZW with 2-bit codes; clear (4), index 0, end (5) packed least significant bit first.
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return header + frame * frames + b"\x3b"


def tiff(width: int, height: int, blocks: int = 1, bits: int = 8) -> bytes:
    """An uncompressed RGB TIFF claiming ``blocks`` strips, each pointing at the same few bytes."""
    entries = 10
    ifd_at = 8
    arrays_at = ifd_at + 2 + 12 * entries + 4
    bits_at = arrays_at
    offsets_at = bits_at + 6
    counts_at = offsets_at + 4 * blocks
    data_at = counts_at + 4 * blocks
    rows_per_strip = max(1, math.ceil(height / blocks))

    def entry(tag: int, kind: int, count: int, value: int) -> bytes:
        return struct.pack("<HHII", tag, kind, count, value)

    ifd = struct.pack("<H", entries) + b"".join([
        entry(256, 4, 1, width),
        entry(257, 4, 1, height),
        entry(258, 3, 3, bits_at),
        entry(259, 3, 1, 1),
        entry(262, 3, 1, 2),
        entry(273, 4, blocks, offsets_at if blocks > 1 else data_at),
        entry(277, 3, 1, 3),
        entry(278, 4, 1, rows_per_strip),
        entry(279, 4, blocks, counts_at if blocks > 1 else 16),
        entry(284, 3, 1, 1),
    ]) + b"\x00\x00\x00\x00"  # fmt: skip
    arrays = struct.pack("<HHH", bits, bits, bits)
    if blocks > 1:
        arrays += struct.pack(f"<{blocks}I", *([data_at] * blocks)) + struct.pack(
            f"<{blocks}I", *([16] * blocks)
        )
    return b"II*\x00" + struct.pack("<I", ifd_at) + ifd + arrays + bytes(16)


def webp(width: int, height: int) -> bytes:
    """A lossless 1 x 1 WEBP whose bitstream header claims ``width`` x ``height`` (at most 16384 a side)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "WEBP", lossless=True)
    data = bytearray(buffer.getvalue())
    at = data.index(b"VP8L") + 8  # chunk header, then the 0x2f signature and 14 + 14 bits of size - 1
    packed = struct.unpack("<I", data[at + 1 : at + 5])[0]
    packed = (packed & ~((1 << 28) - 1)) | (width - 1) | ((height - 1) << 14)
    data[at + 1 : at + 5] = struct.pack("<I", packed)
    return bytes(data)


def bmp(width: int, height: int, bpp: int = 24) -> bytes:
    """A BMP header claiming ``width`` x ``height`` at ``bpp`` bits, with no pixel data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bpp, 0, 0, 2835, 2835, 0, 0)
    palette = bytes(4 * 2**bpp) if bpp <= 8 else b""
    offset = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset, 0, 0, offset) + info + palette


def ico(width: int, height: int) -> bytes:
    """An ICO whose directory says 256 x 256 while its embedded PNG claims ``width`` x ``height``."""
    body = png(width, height, bit_depth=8, color_type=6)
    directory = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(body), 22)
    return directory + body


#: Every builder by format name, called with the claimed width and height.
BUILDERS: dict[str, Callable[[int, int], bytes]] = {
    "png": png,
    "png1": lambda w, h: png(w, h, bit_depth=1, color_type=0),
    "png16": lambda w, h: png(w, h, bit_depth=16, color_type=2),
    "jpeg": jpeg,
    "jpeg_progressive": lambda w, h: jpeg(w, h, progressive=True),
    "gif": gif,
    "tiff": tiff,
    "webp": webp,
    "bmp": bmp,
    "ico": ico,
}


@dataclass(frozen=True)
class HostileCase:
    """One hostile file and what it tries."""

    name: str
    data: bytes
    attack: str


def corpus() -> list[HostileCase]:
    """The worst kinds found: extreme aspect ratios, frame and strip counts, depth, sizes at the caps."""
    return [
        HostileCase(
            "png-1bit-74000x1", png(74_000, 1, bit_depth=1, color_type=0), "the issue's file: a 1 x N strip"
        ),
        HostileCase("png-1x60000", png(1, 60_000), "an N x 1 strip"),
        HostileCase("png-8000x8000", png(8_000, 8_000), "64 Mpx of deflated zeros"),
        HostileCase("png-rgba-8000x8000", png(8_000, 8_000, color_type=6), "64 Mpx with alpha to composite"),
        HostileCase("png16-6000x6000", png(6_000, 6_000, bit_depth=16, color_type=2), "16-bit colour"),
        HostileCase("png16-grey-8000x8000", png(8_000, 8_000, bit_depth=16, color_type=0), "16-bit grey"),
        HostileCase("apng-100000-frames", png(64, 64, frames=100_000), "an APNG claiming 100k frames"),
        HostileCase("jpeg-8000x8000", jpeg(8_000, 8_000), "a 64 Mpx baseline JPEG, 1 kB"),
        HostileCase(
            "jpeg-progressive-8000x8000",
            jpeg(8_000, 8_000, progressive=True),
            "progressive: coefficients kept",
        ),
        HostileCase("jpeg-progressive-65535x900", jpeg(65_535, 900, progressive=True), "progressive strip"),
        HostileCase("gif-65535x900", gif(65_535, 900), "a GIF screen of 59 Mpx"),
        HostileCase("gif-200000-frames", gif(64, 64, frames=200_000), "200k one-pixel frames"),
        HostileCase(
            "tiff-1M-strips", tiff(1_000, 1_000_000 // 1_000 * 1_000, blocks=1_000_000), "a million strips"
        ),
        HostileCase("tiff-8000x8000", tiff(8_000, 8_000, blocks=8_000), "64 Mpx, one strip per row"),
        HostileCase("tiff-32bit", tiff(4_000, 4_000, bits=32), "32 bits per sample"),
        HostileCase("webp-16384x3900", webp(16_384, 3_900), "a WEBP at its format's limit"),
        HostileCase("bmp-1x64000000", bmp(1, 64_000_000), "a BMP 64 million rows tall"),
        HostileCase("bmp-8000x8000", bmp(8_000, 8_000), "a 64 Mpx BMP header"),
        HostileCase("ico-png-60000x1", ico(60_000, 1), "an icon hiding a strip"),
    ]
