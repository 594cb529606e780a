"""What an image claims to be, read from its header alone, and what decoding it would cost.

Nothing here decodes a pixel or imports torch, so the index, the Serve Preprocessor and the Ray Data workers
can all afford to ask before they decode. :func:`check_budget` is the one place the decoding budget
(:class:`genart.config.DecodeLimits`) is enforced; :func:`genart.data.transforms.decode_image` calls it
between opening and decoding, and the index calls it before it loads a file for its hash.

The cost is the sum of the intermediates the transform will allocate: the decoded image (at the JPEG
draft scale when one applies), the copies that orientation and mode conversion make, the resize output
of each model input, and the tensors. Pillow keeps 1, L and P images at one byte per pixel, 16-bit
greyscale at two and every other mode at four, whatever the file's bit depth.
"""

from __future__ import annotations

import io
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from PIL import Image, UnidentifiedImageError

from genart.config import MAX_FRAMES, DecodeLimits

__all__ = [
    "REDUCIBLE_MODES",
    "ImageBudgetError",
    "ImageDecodeError",
    "ImageHeader",
    "SpecLike",
    "check_budget",
    "open_image",
    "preprocess_cost",
    "read_header",
    "reduce_factor",
    "reduced_size",
]

_OPEN_ERRORS = (Image.DecompressionBombError, OSError, ValueError, SyntaxError, EOFError)
_ONE_BYTE_MODES = {"1", "L", "P"}
_TWO_BYTE_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "BGR;15", "BGR;16"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
#: Image.reduce() works on these; others (P, 1, I;16) are converted before they could be reduced.
REDUCIBLE_MODES = {"L", "LA", "RGB", "RGBA", "RGBX", "I", "F", "CMYK", "La", "RGBa"}
_RGB = 4  # Pillow stores RGB as four bytes per pixel
#: Bytes per pixel a format's decoder holds besides Pillow's image: libwebp's animation decoder keeps two
#: RGBA canvases and hands Pillow a third copy as bytes (measured: 982 MB for a 64 Mpx WEBP).
_DECODER_BYTES_PER_PIXEL = {"WEBP": 3 * 4}


class ImageDecodeError(ValueError):
    """The bytes are not an image genart can use. The message says why, for a 4xx answer or a manifest row."""


class ImageBudgetError(ImageDecodeError):
    """The header claims an image whose decoding would pass one of genart's limits.

    ``limit`` is the :class:`~genart.config.DecodeLimits` field, ``value`` what the image would need.
    """

    def __init__(self, limit: str, value: float, cap: float, what: str) -> None:
        self.limit, self.value, self.cap = limit, value, cap
        shown = f"{value:.1f}" if isinstance(value, float) else str(value)
        super().__init__(
            f"{what} is {shown}, above the {limit} limit of {cap}; send a smaller image "
            "(4000 x 4000 or less fits in every format)"
        )


class SpecLike(Protocol):
    """The parts of :class:`genart.data.transforms.InputSpec` that decide the transform's intermediates."""

    input_size: int
    crop_policy: str
    crop_pct: float


@dataclass(frozen=True)
class ImageHeader:
    """What the header says: everything the budget needs, read without decoding a pixel."""

    format: str
    mode: str
    width: int
    height: int
    frames: int = 1
    bit_depth: int = 8
    blocks: int = 0
    orientation: int = 1
    transparency: bool = False
    #: libjpeg keeps a progressive JPEG's DCT coefficients for the whole image, whatever the draft scale.
    coefficient_bytes: int = 0

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def aspect_ratio(self) -> float:
        return max(self.width, self.height) / max(1, min(self.width, self.height))

    @property
    def upright_size(self) -> tuple[int, int]:
        """The size after EXIF orientation (5-8 turn the image by 90 degrees)."""
        return (self.height, self.width) if self.orientation in (5, 6, 7, 8) else (self.width, self.height)


def _tiff_ifd0(data: bytes) -> tuple[int, int, int] | None:
    """Width, height and strip or tile count from a TIFF's first directory, read with struct.

    Pillow builds its strip list in Python when it opens a TIFF: a million strips take seconds before
    genart sees a header, so the count is read here first.
    """
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 16:
        return None
    version = struct.unpack(order + "H", data[2:4])[0]
    if version == 42:
        at = struct.unpack(order + "I", data[4:8])[0]
        count_fmt, entry_fmt, entry_size, head = "H", "HHI", 12, 2
    elif version == 43:  # BigTIFF
        at = struct.unpack(order + "Q", data[8:16])[0]
        count_fmt, entry_fmt, entry_size, head = "Q", "HHQ", 20, 8
    else:
        return None
    if at + head > len(data):
        return None
    entries = struct.unpack(order + count_fmt, data[at : at + head])[0]
    fields: dict[int, int] = {}
    value_at = struct.calcsize(order + entry_fmt)
    for i in range(min(entries, (len(data) - at - head) // entry_size)):
        start = at + head + i * entry_size
        tag, kind, count = struct.unpack(order + entry_fmt, data[start : start + value_at])
        if tag in (256, 257):  # width and height: SHORT or LONG, stored in the entry itself
            fmt = "H" if kind == 3 else "I"
            fields[tag] = struct.unpack(
                order + fmt, data[start + value_at : start + value_at + struct.calcsize(fmt)]
            )[0]
        elif tag in (273, 324):  # StripOffsets, TileOffsets
            fields[273] = max(fields.get(273, 0), count)
    return fields.get(256, 0), fields.get(257, 0), fields.get(273, 0)


def _webp_canvas(data: bytes) -> tuple[int, int] | None:
    """The canvas an extended WEBP claims: libwebp allocates it when Pillow opens the file."""
    if data[:4] != b"RIFF" or data[8:16] != b"WEBPVP8X" or len(data) < 30:
        return None
    width = int.from_bytes(data[24:27], "little") + 1
    return width, int.from_bytes(data[27:30], "little") + 1


def _check_before_open(data: bytes, limits: DecodeLimits) -> None:
    tiff = _tiff_ifd0(data)
    if tiff is not None:
        width, height, blocks = tiff
        if blocks > limits.max_tiff_blocks:
            raise ImageBudgetError(
                "max_tiff_blocks", blocks, limits.max_tiff_blocks, "its number of TIFF strips or tiles"
            )
        if width * height > limits.max_pixels:
            raise ImageBudgetError(
                "max_pixels", width * height, limits.max_pixels, f"image is {width}x{height}: its pixel count"
            )
    canvas = _webp_canvas(data)
    if canvas is not None and canvas[0] * canvas[1] > limits.max_pixels:
        width, height = canvas
        raise ImageBudgetError(
            "max_pixels", width * height, limits.max_pixels, f"image is {width}x{height}: its pixel count"
        )


def open_image(data: bytes, limits: DecodeLimits | None = None) -> Image.Image:
    """Open lazily (header only), or raise :class:`ImageDecodeError` saying why not.

    The few formats whose opening already costs in proportion to what they claim (a TIFF's strip list,
    an extended WEBP's canvas) are checked against ``limits`` from their bytes first.
    """
    if not data:
        raise ImageDecodeError("empty file")
    limits = limits or DecodeLimits()
    _check_before_open(data, limits)
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not a recognised image format") from exc
    except Image.DecompressionBombError as exc:
        # Pillow refuses twice its own warning threshold at open, before genart sees the size: same limit.
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        value = int(claimed.group(1)) if claimed else Image.MAX_IMAGE_PIXELS * 2
        raise ImageBudgetError("max_pixels", value, limits.max_pixels, "its pixel count") from exc
    except _OPEN_ERRORS as exc:
        raise ImageDecodeError(f"cannot open image: {exc}") from exc


def _bit_depth(image: Image.Image, data: bytes | None) -> int:
    if image.format == "PNG" and data is not None and len(data) > 24:
        return data[24]  # IHDR's bit depth: Pillow opens 16-bit colour PNGs as 8-bit RGB
    if image.format == "TIFF":
        bits = image.tag_v2.get(258)
        if bits:
            return int(max(bits) if isinstance(bits, tuple) else bits)
    if image.format in ("JPEG", "MPO") and getattr(image, "bits", None):
        return int(image.bits)
    if image.mode in _TWO_BYTE_MODES:
        return 16
    if image.mode in ("I", "F"):
        return 32
    return 1 if image.mode == "1" else 8


def _tiff_blocks(image: Image.Image) -> int:
    if image.format != "TIFF":
        return 0
    offsets = image.tag_v2.get(324) or image.tag_v2.get(273) or ()  # TileOffsets, else StripOffsets
    return len(offsets) if isinstance(offsets, tuple) else 1


def _gif_frames(data: bytes, cap: int) -> int:
    """Count a GIF's image descriptors by walking its blocks, stopping past ``cap``.

    Pillow's ``n_frames`` walks every frame, and its ``seek`` decodes each one to composite the next.
    """
    pos = 13
    if len(data) > 10 and data[10] & 0x80:
        pos += 3 << ((data[10] & 7) + 1)  # global colour table
    frames = 0

    def skip_sub_blocks(at: int) -> int:
        while at < len(data) and data[at]:
            at += data[at] + 1
        return at + 1

    while pos < len(data) and frames <= cap:
        kind = data[pos]
        if kind == 0x21:  # extension: label, then sub-blocks
            pos = skip_sub_blocks(pos + 2)
        elif kind == 0x2C:  # image descriptor, optional local colour table, LZW code size, sub-blocks
            frames += 1
            flags = data[pos + 9] if pos + 9 < len(data) else 0
            pos += 10 + ((3 << ((flags & 7) + 1)) if flags & 0x80 else 0)
            pos = skip_sub_blocks(pos + 1)
        else:  # the trailer, or garbage after the last frame
            break
    return max(frames, 1)


def _count_frames(image: Image.Image, data: bytes | None, cap: int) -> int:
    """Frames the file claims, stopping one past ``cap``: never a decoded pixel, never an unbounded walk."""
    if image.format == "GIF" and data is not None:
        return _gif_frames(data, cap)
    if image.format == "TIFF":  # Pillow reads one IFD per seek
        frames = 1
        try:
            while frames <= cap:
                image.seek(frames)
                frames += 1
        except EOFError:
            pass
        image.seek(0)
        return frames
    return int(getattr(image, "n_frames", 1) or 1)  # APNG's acTL, WEBP's demuxer: read from the header


def _orientation(image: Image.Image) -> int:
    """EXIF orientation from the header. Pillow's ``getexif`` decodes a whole PNG to look for a late eXIf
    chunk, so a PNG's is read only from an eXIf chunk before the pixels."""
    if image.format == "PNG":
        raw = image.info.get("exif")
        if not raw:
            return 1
        exif = Image.Exif()
        exif.load(raw)
        return int(exif.get(0x0112, 1) or 1)
    return int(image.getexif().get(0x0112, 1) or 1)


def read_header(image: Image.Image, data: bytes | None = None, max_frames: int = MAX_FRAMES) -> ImageHeader:
    """Read an opened (not loaded) image's header. ``data`` lets PNG report its true bit depth and GIF its
    frames; frames are counted up to one past ``max_frames``."""
    try:
        frames = _count_frames(image, data, max_frames)
        orientation = _orientation(image)
        header = ImageHeader(
            format=image.format or "unknown",
            mode=image.mode,
            width=int(image.width),
            height=int(image.height),
            frames=frames,
            bit_depth=_bit_depth(image, data),
            blocks=_tiff_blocks(image),
            orientation=orientation if 1 <= orientation <= 8 else 1,
            transparency=image.mode in _ALPHA_MODES or "transparency" in image.info,
            coefficient_bytes=(
                2 * image.width * image.height * len(image.mode)
                if image.format in ("JPEG", "MPO") and image.info.get("progressive")
                else 0
            ),
        )
    except _OPEN_ERRORS as exc:
        raise ImageDecodeError(f"unreadable image header: {exc}") from exc
    return header


def _bytes_per_pixel(mode: str) -> int:
    if mode in _ONE_BYTE_MODES:
        return 1
    return 2 if mode in _TWO_BYTE_MODES else 4


def reduce_factor(size: tuple[int, int], specs: Sequence[SpecLike]) -> int:
    """How much a decoded image may be box-reduced before :func:`eval_transform` resizes it.

    Only when every spec resizes (``crop`` needs native pixels), and only down to twice the resize target,
    as Pillow's own ``reducing_gap=2`` does: the result matches a plain resample to within rounding.
    """
    if not specs or any(spec.crop_policy != "resize" for spec in specs):
        return 1
    target = max(math.floor(spec.input_size / spec.crop_pct) for spec in specs)
    return max(1, min(size) // (2 * target))


def reduced_size(size: tuple[int, int], factor: int) -> tuple[int, int]:
    """The size ``Image.reduce(factor)`` gives an image of ``size`` (each side divided, rounded up)."""
    return -(-size[0] // factor), -(-size[1] // factor)


def _transform_cost(width: int, height: int, spec: SpecLike) -> int:
    """Bytes one model input's transform allocates from an RGB image of this size."""
    canonical = 0
    if getattr(spec, "jpeg_quality", None) is not None:  # CanonicalJPEG: reduced copy, re-save, its decode
        factor = reduce_factor((width, height), [spec])
        width, height = reduced_size((width, height), factor)
        canonical = _RGB * width * height * (3 if factor > 1 else 2)
    return canonical + _geometry_cost(width, height, spec)


def _geometry_cost(width: int, height: int, spec: SpecLike) -> int:
    side = spec.input_size
    tensor = 3 * side * side * (1 + 4 + 4)  # uint8 view, float tensor, normalised copy
    if spec.crop_policy == "resize":
        scale = math.floor(side / spec.crop_pct)
        short, long = min(width, height), max(width, height)
        resized_long = math.ceil(scale * long / short)
        # Pillow resamples the width first: the intermediate has the new width and the old height.
        first_pass = (resized_long if width >= height else scale) * height
        return _RGB * (first_pass + scale * resized_long + side * side) + tensor
    padded = max(width, side) * max(height, side)
    pad = (3 + 3 + _RGB) * padded if width < side or height < side else 0
    return pad + _RGB * side * side + tensor


def preprocess_cost(header: ImageHeader, specs: Sequence[SpecLike] = (), augmented: bool = False) -> int:
    """Bytes the decode and transform would allocate for ``header`` (its size after any draft scaling).

    ``augmented`` (training, or a robustness degradation) decodes at full size and adds one full-size copy
    for the augmentation (blur, rescale, JPEG re-save).
    """
    width, height = header.width, header.height
    pixels = width * height
    decoder = _DECODER_BYTES_PER_PIXEL.get(header.format, 0)
    cost = header.coefficient_bytes + pixels * (decoder + _bytes_per_pixel(header.mode))  # the decode
    factor = 1 if augmented else reduce_factor((width, height), specs)
    if factor > 1:
        if header.mode not in REDUCIBLE_MODES:
            cost += pixels * _RGB  # converted first so that it can be reduced
        width, height = reduced_size((width, height), factor)
        pixels = width * height
        cost += pixels * _RGB
    if header.orientation != 1:
        cost += pixels * _RGB
    if header.mode in _TWO_BYTE_MODES or header.mode in ("I", "F"):
        cost += pixels * (4 + 1 + _RGB)  # scaled to 8 bits, greyscale, then RGB
    elif header.transparency:
        cost += pixels * _RGB * 4  # RGBA, the white background, the composite, then RGB
    elif header.mode != "RGB":
        cost += pixels * _RGB
    if augmented:
        cost += pixels * _RGB
    width, height = header.upright_size if factor == 1 else (width, height)
    return cost + sum(_transform_cost(width, height, spec) for spec in specs)


def check_budget(
    header: ImageHeader,
    limits: DecodeLimits,
    specs: Sequence[SpecLike] = (),
    augmented: bool = False,
    decoded_size: tuple[int, int] | None = None,
) -> int:
    """Raise :class:`ImageBudgetError` naming the first limit the image passes; else return its cost in bytes.

    The claimed size is checked as the header states it; the memory is computed for ``decoded_size``, the
    size a JPEG ``draft`` will decode at, when one applies.
    """
    if header.width < 1 or header.height < 1:
        raise ImageDecodeError("image has no pixels")
    checks: list[tuple[str, Any, Any, str]] = [
        (
            "max_pixels",
            header.pixels,
            limits.max_pixels,
            f"image is {header.width}x{header.height}: its pixel count",
        ),
        ("max_aspect_ratio", header.aspect_ratio, limits.max_aspect_ratio, "its aspect ratio"),
        ("max_frames", header.frames, limits.max_frames, "its frame count"),
        ("max_bit_depth", header.bit_depth, limits.max_bit_depth, "its bit depth"),
        ("max_tiff_blocks", header.blocks, limits.max_tiff_blocks, "its number of TIFF strips or tiles"),
    ]
    for limit, value, cap, what in checks:
        if value > cap:
            raise ImageBudgetError(limit, value, cap, what)
    decoded = (
        header if decoded_size is None else replace(header, width=decoded_size[0], height=decoded_size[1])
    )
    cost = preprocess_cost(decoded, specs, augmented)
    if decoded_size is not None:  # draft steps by powers of two; a box resample ends at the reduce's size
        full = (header.width, header.height)
        reduced = reduced_size(full, reduce_factor(full, specs))
        cost += _RGB * reduced[0] * reduced[1] if reduced != tuple(decoded_size) else 0
    if cost > limits.max_preprocess_bytes:
        raise ImageBudgetError(
            "max_preprocess_bytes", cost, limits.max_preprocess_bytes, "the memory preprocessing would need"
        )
    return cost
