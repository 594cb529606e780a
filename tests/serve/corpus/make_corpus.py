"""Writes the hostile-input corpus: small malformed or malicious files, and ``cases.yaml``, which says how
each case is sent to the API and what it must answer.

Run it from the repository root (``python tests/serve/corpus/make_corpus.py``); it is deterministic, so the
files it writes are committed with it. Every bomb is a header trick: the files stay a few KB.

A case in ``cases.yaml``:

- ``id``: the test id; ``what``: what the case is, for a reader;
- ``send``: ``multipart`` (one ``file`` part), ``json_base64``, ``json_url``, ``raw`` (the body as is, with
  ``content_type``), ``batch`` (``count`` copies of the file as ``files`` parts), ``parts`` (a multipart
  body of ``count`` parts named ``field``), ``json`` (``body`` as JSON) or ``empty`` (no body);
- ``file`` (under this folder) or ``fill`` (``[byte, count]``: a body made in memory, for the size cap);
- ``filename`` (sent instead of the file's own name), ``url`` (``{server}`` is the local image server),
  ``method``/``path`` (default ``POST /predict``);
- ``expect``: ``status`` (an int, or a list where the machine decides, e.g. what ``localhost`` resolves
  to), ``code`` (``error.code``), and for a 200 ``filename`` (the sanitised name the API echoes).
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

HERE = Path(__file__).resolve().parent
MAX_UPLOAD = 2_000_000
MAX_BATCH = 4


def _noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def _encode(image: Image.Image, fmt: str, **save: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, *extra: bytes, idat: bytes | None = None) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64) if idat is None else idat
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + b"".join(extra)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _gif_bomb() -> bytes:
    """A GIF whose logical screen is 65535x65535 over a 1x1 frame."""
    small = _encode(Image.new("P", (1, 1)), "GIF")
    return small[:6] + struct.pack("<HH", 65535, 65535) + small[10:]


def _jpeg_with_sof_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` with the frame header (SOF0/SOF2) claiming ``width`` x ``height``."""
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            # SOFn: marker, length (2), precision (1), height (2), width (2)
            return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]
    raise ValueError("no SOF marker")


def _jpeg_with_app(data: bytes, marker: bytes, payload: bytes) -> bytes:
    """``data`` (a JPEG) with an APPn segment inserted after SOI."""
    return data[:2] + marker + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def _tiff_exif(
    entries: list[tuple[int, int, int, bytes]], next_ifd: int = 0, count_override: int | None = None
) -> bytes:
    """A little-endian TIFF/EXIF block: one IFD of ``(tag, type, count, value4)`` entries."""
    n = len(entries) if count_override is None else count_override
    body = struct.pack("<H", n)
    for tag, kind, count, value in entries:
        body += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\0")
    body += struct.pack("<I", next_ifd)
    return b"II*\x00" + struct.pack("<I", 8) + body


def _exif_app1(tiff: bytes) -> bytes:
    return b"Exif\x00\x00" + tiff


def _orientation(value: int) -> bytes:
    return _exif_app1(_tiff_exif([(0x0112, 3, 1, struct.pack("<H", value))]))


def _zip_of(name: str, content: bytes) -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
        archive.writestr(info, content)
    return buffer.getvalue()


def _tiff_bomb() -> bytes:
    """A TIFF whose IFD declares 100000x100000 over one strip of 3 bytes."""
    entries = [
        (256, 4, 1, struct.pack("<I", 100_000)),  # ImageWidth
        (257, 4, 1, struct.pack("<I", 100_000)),  # ImageLength
        (258, 3, 1, struct.pack("<H", 8)),  # BitsPerSample
        (259, 3, 1, struct.pack("<H", 1)),  # Compression: none
        (262, 3, 1, struct.pack("<H", 1)),  # Photometric: black is zero
        (273, 4, 1, struct.pack("<I", 8 + 2 + 9 * 12 + 4)),  # StripOffsets: just past the IFD
        (277, 3, 1, struct.pack("<H", 1)),  # SamplesPerPixel
        (278, 4, 1, struct.pack("<I", 100_000)),  # RowsPerStrip
        (279, 4, 1, struct.pack("<I", 3)),  # StripByteCounts
    ]
    return _tiff_exif(entries) + b"\0\0\0"


def _bmp_bomb() -> bytes:
    """A BMP header claiming 50000x50000 at 24 bits over no pixel data."""
    header = struct.pack("<IiiHHIIiiII", 40, 50_000, 50_000, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(header), 0, 0, 14 + len(header)) + header


SVG_EXTERNAL = b"""<?xml version="1.0"?>
<!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="64" height="64">
  <image xlink:href="file:///etc/passwd" width="64" height="64"/>
  <image xlink:href="http://169.254.169.254/latest/meta-data/iam/security-credentials/" width="6"/>
  <text>&xxe;</text>
  <script>fetch('http://169.254.169.254/')</script>
</svg>
"""


def files() -> dict[str, bytes]:
    """Every corpus file by name."""
    png = _encode(_noise((64, 48), 1), "PNG")
    jpeg = _encode(_noise((64, 48), 2), "JPEG", quality=80)
    gif = _encode(_noise((32, 32), 3).convert("P"), "GIF")
    html = b"<html><body><script>alert(document.cookie)</script></body></html>\n"
    return {
        "valid.png": png,
        # polyglots: a real image that is also another kind of file; decoders read the image
        "polyglot_gif_zip.gif": gif + _zip_of("payload.js", b"alert(1)\n"),
        "polyglot_png_html.png": png[:-12] + _png_chunk(b"tEXt", b"Comment\0" + html) + png[-12:] + html,
        "polyglot_jpeg_zip.jpg": jpeg + _zip_of("index.html", html),
        "polyglot_gif_js.gif": b"GIF89a/*" + gif[8:] + b"*/=alert(1);\n",
        # decompression bombs: tiny files, huge declared sizes
        "bomb_png_100k.png": _png(100_000, 100_000),
        "bomb_png_max.png": _png(2**31 - 1, 2**31 - 1),
        "bomb_png_iccp_zlib.png": _png(
            8,
            8,
            _png_chunk(b"iCCP", b"icc\0\0" + zlib.compress(b"\0" * 5_000_000, 9)),
            idat=zlib.compress(b"\0" * (8 * 25)),
        ),
        "bomb_png_ztxt_zlib.png": _png(
            8,
            8,
            _png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"A" * 5_000_000, 9)),
            idat=zlib.compress(b"\0" * (8 * 25)),
        ),
        "bomb_gif.gif": _gif_bomb(),
        "bomb_jpeg_sof.jpg": _jpeg_with_sof_size(jpeg, 65_500, 65_500),
        "bomb_tiff.tif": _tiff_bomb(),
        "bomb_bmp.bmp": _bmp_bomb(),
        "jpeg_sof_zero_height.jpg": _jpeg_with_sof_size(jpeg, 64, 0),
        # SVG with external references (never rendered: not a raster format)
        "svg_external.svg": SVG_EXTERNAL,
        # EXIF and ICC tricks on a valid JPEG
        "exif_orientation_99.jpg": _jpeg_with_app(jpeg, b"\xff\xe1", _orientation(99)),
        "exif_orientation_65535.jpg": _jpeg_with_app(jpeg, b"\xff\xe1", _orientation(65535)),
        "exif_huge_blob.jpg": _jpeg_with_app(
            jpeg,
            b"\xff\xe1",
            _exif_app1(_tiff_exif([(0x010E, 2, 32_000, struct.pack("<I", 26))]) + b"A" * 32_000),
        ),
        "exif_ifd_count_ffff.jpg": _jpeg_with_app(
            jpeg, b"\xff\xe1", _exif_app1(_tiff_exif([(0x0112, 3, 1, b"\x01\0")], count_override=0xFFFF))
        ),
        "exif_ifd_loop.jpg": _jpeg_with_app(
            jpeg, b"\xff\xe1", _exif_app1(_tiff_exif([(0x0112, 3, 1, b"\x06\0")], next_ifd=8))
        ),
        "exif_offset_out_of_range.jpg": _jpeg_with_app(
            jpeg,
            b"\xff\xe1",
            _exif_app1(
                _tiff_exif(
                    [
                        (0x010E, 2, 0x7FFFFFFF, struct.pack("<I", 0xFFFFFF00)),
                        (0x8769, 4, 1, struct.pack("<I", 0xFFFFFFF0)),
                    ]
                )
            ),
        ),
        "exif_not_tiff.jpg": _jpeg_with_app(jpeg, b"\xff\xe1", b"Exif\x00\x00XX\x00\x2a garbage"),
        "icc_huge_blob.jpg": _jpeg_with_app(jpeg, b"\xff\xe2", b"ICC_PROFILE\x00\x01\x01" + b"\x7f" * 20_000),
        # broken or not images
        "truncated.jpg": jpeg[:300],
        "truncated.png": png[: len(png) // 2],
        "png_bad_crc.png": png[:29] + b"\0\0\0\0" + png[33:],
        "zero.png": b"",
        "text.jpg": b"hello, I am a text file with a .jpg name\n",
        "html.png": html,
        "nested.json": b"[" * 5_000,
    }


def _case(
    id_: str, what: str, send: str, status: int | list[int], code: str | None = None, **kw: Any
) -> dict:
    if send == "batch":
        kw.setdefault("path", "/batch-predict")
    expect: dict[str, Any] = {"status": status}
    if code:
        expect["code"] = code
    if "expect_filename" in kw:
        expect["filename"] = kw.pop("expect_filename")
    return {"id": id_, "what": what, "send": send, **kw, "expect": expect}


def cases() -> list[dict[str, Any]]:
    bad, bomb = "invalid_image", "invalid_image"
    refused = "url_refused"
    long_name = "a" * 996 + ".png"
    return [
        # -- polyglots: they decode as images, so they are classified; the bytes are never served back
        _case(
            "polyglot_gif_zip",
            "a GIF that is also a ZIP holding a .js",
            "multipart",
            200,
            file="polyglot_gif_zip.gif",
        ),
        _case(
            "polyglot_png_html",
            "a PNG with HTML/JS in a tEXt chunk and after IEND",
            "multipart",
            200,
            file="polyglot_png_html.png",
        ),
        _case(
            "polyglot_jpeg_zip",
            "a JPEG that is also a ZIP holding HTML",
            "json_base64",
            200,
            file="polyglot_jpeg_zip.jpg",
        ),
        _case(  # "/*" makes the width 10799 over a height of 32: refused by the aspect-ratio cap
            "polyglot_gif_js",
            "a GIF/JS polyglot (GIF89a/* ... */=alert(1))",
            "multipart",
            422,
            bad,
            file="polyglot_gif_js.gif",
        ),
        # -- decompression bombs
        _case(
            "bomb_png", "PNG header claiming 100000x100000", "multipart", 422, bomb, file="bomb_png_100k.png"
        ),
        _case(
            "bomb_png_max",
            "PNG header claiming 2^31-1 squared",
            "multipart",
            422,
            bomb,
            file="bomb_png_max.png",
        ),
        _case(
            "bomb_png_iccp",
            "8x8 PNG whose iCCP chunk inflates to 5 MB",
            "multipart",
            422,
            bomb,
            file="bomb_png_iccp_zlib.png",
        ),
        _case(
            "bomb_png_ztxt",
            "8x8 PNG whose zTXt chunk inflates to 5 MB",
            "multipart",
            422,
            bomb,
            file="bomb_png_ztxt_zlib.png",
        ),
        _case("bomb_gif", "GIF logical screen 65535x65535", "multipart", 422, bomb, file="bomb_gif.gif"),
        _case(
            "bomb_jpeg_sof",
            "JPEG SOF header claiming 65500x65500",
            "multipart",
            422,
            bomb,
            file="bomb_jpeg_sof.jpg",
        ),
        _case(
            "bomb_jpeg_sof_base64",
            "the same JPEG bomb as base64 JSON",
            "json_base64",
            422,
            bomb,
            file="bomb_jpeg_sof.jpg",
        ),
        _case("bomb_tiff", "TIFF IFD claiming 100000x100000", "multipart", 422, bomb, file="bomb_tiff.tif"),
        _case("bomb_bmp", "BMP header claiming 50000x50000", "multipart", 422, bomb, file="bomb_bmp.bmp"),
        _case(
            "jpeg_sof_zero_height",
            "JPEG SOF with height 0",
            "multipart",
            422,
            bad,
            file="jpeg_sof_zero_height.jpg",
        ),
        # -- SVG with external references: not a raster format, never parsed or fetched
        _case(
            "svg_external",
            "SVG with xlink:href to file:// and 169.254.169.254, and an XXE",
            "multipart",
            422,
            bad,
            file="svg_external.svg",
        ),
        _case(
            "svg_as_png",
            "the same SVG named .png, sent as base64 JSON",
            "json_base64",
            422,
            bad,
            file="svg_external.svg",
            filename="logo.png",
        ),
        _case(
            "svg_raw",
            "the SVG as a raw image/svg+xml body",
            "raw",
            415,
            "unsupported_media_type",
            file="svg_external.svg",
            content_type="image/svg+xml",
        ),
        # -- EXIF / ICC tricks: ignored or refused, never a crash
        _case("exif_orientation_99", "EXIF orientation 99", "multipart", 200, file="exif_orientation_99.jpg"),
        _case(
            "exif_orientation_65535",
            "EXIF orientation 65535",
            "multipart",
            200,
            file="exif_orientation_65535.jpg",
        ),
        _case("exif_huge_blob", "a 32 KB EXIF ImageDescription", "multipart", 200, file="exif_huge_blob.jpg"),
        _case(
            "exif_ifd_count_ffff",
            "EXIF IFD claiming 65535 entries",
            "multipart",
            200,
            file="exif_ifd_count_ffff.jpg",
        ),
        _case(
            "exif_ifd_loop",
            "EXIF IFD whose next-IFD offset points at itself",
            "multipart",
            200,
            file="exif_ifd_loop.jpg",
        ),
        _case(
            "exif_offsets_out_of_range",
            "EXIF values and sub-IFD at offsets past the end",
            "multipart",
            200,
            file="exif_offset_out_of_range.jpg",
        ),
        _case("exif_not_tiff", "an Exif APP1 that is not TIFF", "multipart", 200, file="exif_not_tiff.jpg"),
        _case(
            "icc_huge_blob",
            "a 20 KB ICC_PROFILE segment of garbage",
            "multipart",
            200,
            file="icc_huge_blob.jpg",
        ),
        # -- broken and non-images
        _case("truncated_jpeg", "the first 300 bytes of a JPEG", "multipart", 422, bad, file="truncated.jpg"),
        _case("truncated_png", "half a PNG", "multipart", 422, bad, file="truncated.png"),
        _case("png_bad_crc", "a PNG whose IHDR CRC is wrong", "multipart", 422, bad, file="png_bad_crc.png"),
        _case("zero_bytes", "an empty upload", "multipart", 422, bad, file="zero.png"),
        _case("zero_bytes_base64", "an empty base64 image", "json", 422, bad, body={"image": ""}),
        _case("text_as_jpg", "a text file named .jpg", "multipart", 422, bad, file="text.jpg"),
        _case("html_as_png", "an HTML page named .png", "multipart", 422, bad, file="html.png"),
        # -- hostile names on a valid image: accepted, the name sanitised
        _case(
            "name_traversal",
            "filename ../../etc/passwd.png",
            "multipart",
            200,
            file="valid.png",
            filename="../../etc/passwd.png",
            expect_filename="passwd.png",
        ),
        _case(
            "name_windows_traversal",
            "filename ..\\..\\windows\\win.ini.png",
            "json_base64",
            200,
            file="valid.png",
            filename="..\\..\\windows\\win.ini.png",
            expect_filename="win.ini.png",
        ),
        _case(
            "name_rtl_override",
            "filename with U+202E (shows as 'invoicegnp.exe')",
            "multipart",
            200,
            file="valid.png",
            filename="invoice\u202eexe.png",
            expect_filename="invoiceexe.png",
        ),
        _case(
            "name_emoji",
            "an emoji filename",
            "multipart",
            200,
            file="valid.png",
            filename="\U0001f916\U0001f3a8.png",
            expect_filename="\U0001f916\U0001f3a8.png",
        ),
        _case(
            "name_nul_byte",
            "filename evil.png<NUL>.php",
            "multipart",
            200,
            file="valid.png",
            filename="evil.png\x00.php",
            expect_filename="evil.png.php",
        ),
        _case(
            "name_crlf",
            "filename with CR LF and a fake header, as JSON",
            "json_base64",
            200,
            file="valid.png",
            filename="a\r\nX-Injected: 1.png",
            expect_filename="aX-Injected: 1.png",
        ),
        _case(
            "name_1000_chars",
            "a 1,000-character filename",
            "multipart",
            200,
            file="valid.png",
            filename=long_name,
            expect_filename=long_name[:255],
        ),
        _case(
            "name_1000_chars_json",
            "a 1,000-character filename in JSON (over the schema's 255)",
            "json_base64",
            422,
            "invalid_request",
            file="valid.png",
            filename=long_name,
        ),
        # -- SSRF: the test app allow-lists 127.0.0.1/32 only, so other loopbacks are refused too
        _case(
            "url_metadata",
            "the cloud metadata address",
            "json_url",
            400,
            refused,
            url="http://169.254.169.254/latest/meta-data/",
        ),
        _case(
            "url_loopback_decimal",
            "127.0.0.2 as a decimal integer",
            "json_url",
            400,
            refused,
            url="http://2130706434/",
        ),
        _case("url_loopback_hex", "127.0.0.2 in hex", "json_url", 400, refused, url="http://0x7f000002/"),
        _case(
            "url_loopback_octal",
            "127.0.0.2 in dotted octal",
            "json_url",
            400,
            refused,
            url="http://0177.0.0.2/",
        ),
        _case("url_loopback_short", "127.0.0.2 in short form", "json_url", 400, refused, url="http://127.2/"),
        _case(
            "url_metadata_decimal",
            "169.254.169.254 as a decimal integer",
            "json_url",
            400,
            refused,
            url="http://2852039166/latest/meta-data/",
        ),
        _case("url_ipv6_loopback", "IPv6 loopback", "json_url", 400, refused, url="http://[::1]/"),
        _case(
            "url_ipv6_mapped_metadata",
            "IPv4-mapped IPv6 of the metadata address",
            "json_url",
            400,
            refused,
            url="http://[::ffff:169.254.169.254]/",
        ),
        _case(
            "url_ipv6_mapped_loopback",
            "IPv4-mapped IPv6 of 127.0.0.2",
            "json_url",
            400,
            refused,
            url="http://[::ffff:7f00:2]/",
        ),
        _case("url_unspecified", "0.0.0.0", "json_url", 400, refused, url="http://0.0.0.0/"),
        _case("url_private", "a private address", "json_url", 400, refused, url="http://10.0.0.1/x.png"),
        _case(
            "url_credentials",
            "credentials in the URL",
            "json_url",
            400,
            refused,
            url="http://user:pass@169.254.169.254/",
        ),
        _case("url_file", "file:// scheme", "json_url", 400, refused, url="file:///etc/passwd"),
        _case(
            "url_gopher", "gopher:// scheme", "json_url", 400, refused, url="gopher://127.0.0.1:6379/_INFO"
        ),
        _case(
            "url_redirect_to_metadata",
            "the allowed local server redirecting to 169.254.169.254",
            "json_url",
            400,
            refused,
            url="{server}/to-metadata",
        ),
        # allowed only where localhost resolves to 127.0.0.1 alone; where it also gives ::1, refused
        _case(
            "url_localhost_name",
            "a DNS name resolving to loopback",
            "json_url",
            [200, 400],
            url="http://localhost:{port}/img.png",
        ),
        _case(
            "url_too_long",
            "a 3,000-character URL",
            "json_url",
            422,
            "invalid_request",
            url="http://169.254.169.254/" + "a" * 3000,
        ),
        _case(
            "url_control_chars",
            "a URL with a newline in its host",
            "json_url",
            400,
            refused,
            url="http://127.0.0.1\n.evil/",
        ),
        # -- the request itself
        _case(
            "over_size_multipart",
            "a multipart body over the 2 MB cap",
            "multipart",
            413,
            "payload_too_large",
            fill=[0, MAX_UPLOAD + 100],
        ),
        _case(
            "over_size_raw",
            "a raw body over the cap with the wrong type",
            "raw",
            413,
            "payload_too_large",
            fill=[0x41, MAX_UPLOAD + 100],
            content_type="application/octet-stream",
        ),
        _case(
            "wrong_content_type",
            "an image as a raw image/png body",
            "raw",
            415,
            "unsupported_media_type",
            file="valid.png",
            content_type="image/png",
        ),
        _case(
            "no_content_type",
            "a body with no content type",
            "raw",
            415,
            "unsupported_media_type",
            file="valid.png",
            content_type="",
        ),
        _case(
            "json_malformed",
            "malformed JSON",
            "raw",
            422,
            "invalid_request",
            content_type="application/json",
            text='{"image": "AAAA',
        ),
        _case(
            "json_nested",
            "JSON nested 5,000 arrays deep",
            "raw",
            422,
            "invalid_request",
            content_type="application/json",
            file="nested.json",
        ),
        _case("json_array", "a JSON array instead of an object", "json", 422, "invalid_request", body=[1, 2]),
        _case("json_wrong_types", "a number for image", "json", 422, "invalid_request", body={"image": 5}),
        _case(
            "json_both",
            "url and image together",
            "json",
            422,
            "invalid_request",
            body={"url": "http://169.254.169.254/", "image": "AAAA"},
        ),
        _case(
            "json_not_base64",
            "image that is not base64",
            "json",
            400,
            "bad_request",
            body={"image": "not base64 at all!"},
        ),
        _case(
            "multipart_no_boundary",
            "multipart/form-data without a boundary",
            "raw",
            400,
            "bad_request",
            file="valid.png",
            content_type="multipart/form-data",
        ),
        _case(
            "multipart_wrong_field",
            "the image in a field not named file",
            "parts",
            400,
            "bad_request",
            file="valid.png",
            field="image",
            count=1,
        ),
        _case(
            "multipart_too_many_files",
            "30 file parts",
            "parts",
            400,
            "bad_request",
            file="valid.png",
            field="file",
            count=30,
        ),
        _case(
            "multipart_too_many_fields", "500 plain fields", "parts", 400, "bad_request", field="x", count=500
        ),
        _case(
            "batch_over_cap",
            f"{MAX_BATCH + 1} images, one over the cap",
            "batch",
            400,
            "batch_too_large",
            file="valid.png",
            count=MAX_BATCH + 1,
        ),
        _case(
            "batch_far_over_cap",
            "200 tiny parts",
            "batch",
            400,
            "batch_too_large",
            file="zero.png",
            count=200,
        ),
        _case(
            "batch_empty", "a batch with no files", "batch", 422, "invalid_request", file="valid.png", count=0
        ),
        _case(
            "batch_all_bad", "a batch of bombs and text", "batch", 422, bad, file="bomb_png_100k.png", count=3
        ),
        _case(
            "batch_hostile_names",
            "a batch of valid images with traversal names",
            "batch",
            200,
            file="valid.png",
            count=2,
            filename="../../../../root/.ssh/id_rsa.png",
            expect_filename="id_rsa.png",
        ),
        _case(
            "batch_as_json",
            "a batch sent as JSON",
            "json",
            422,
            "invalid_request",
            path="/batch-predict",
            body={"files": ["AAAA"]},
        ),
        _case(
            "feedback_long_id",
            "feedback with a 1,000-character request_id",
            "json",
            422,
            "invalid_request",
            path="/feedback",
            body={"request_id": "x" * 1000, "label": "ai"},
        ),
        _case(
            "feedback_bad_label",
            "feedback with an unknown label",
            "json",
            422,
            "invalid_request",
            path="/feedback",
            body={"request_id": "abc", "label": "maybe"},
        ),
        _case("predict_get", "GET on a POST route", "empty", 405, "method_not_allowed", method="GET"),
        _case(
            "path_traversal_route",
            "a traversal in the path",
            "empty",
            404,
            "not_found",
            method="GET",
            path="/static/../../etc/passwd",
        ),
    ]


def main() -> None:
    for name, data in files().items():
        (HERE / name).write_bytes(data)
    header = "# Written by make_corpus.py; edit that and run it again. See its docstring for the fields.\n"
    text = yaml.safe_dump(cases(), sort_keys=False, allow_unicode=False, width=110)
    (HERE / "cases.yaml").write_text(header + text)


if __name__ == "__main__":
    main()
