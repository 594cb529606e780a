"""The decoding budget: each limit checked from the header, named in the refusal, shared by all callers."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from PIL import Image

from genart.bench import hostile
from genart.bench.budget import SPEC_SETS, Sandbox
from genart.config import DecodeLimits
from genart.data.headers import ImageBudgetError, check_budget, open_image, read_header, reduce_factor
from genart.data.transforms import (
    ImageDecodeError,
    InputSpec,
    decode_image,
    decode_with_header,
    eval_transform,
)
from genart.serve.deployments import prepare_image

RESIZE, CROP = InputSpec(), InputSpec(crop_policy="crop")


def _refusal(data: bytes, limits: DecodeLimits | None = None, specs=(RESIZE, CROP)) -> ImageBudgetError:
    with pytest.raises(ImageBudgetError) as caught:
        decode_image(data, list(specs), limits)
    return caught.value


@pytest.mark.parametrize(
    "data, limit",
    [
        (hostile.png(74_000, 1, bit_depth=1, color_type=0), "max_aspect_ratio"),  # the issue's 88-byte file
        (hostile.bmp(1, 64_000_000), "max_aspect_ratio"),
        (hostile.png(64, 64, frames=100_000), "max_frames"),
        (hostile.gif(64, 64, frames=20_000), "max_frames"),
        (hostile.tiff(1_000, 100_000, blocks=100_000), "max_tiff_blocks"),
        (hostile.png(100_000, 100_000), "max_pixels"),
        (hostile.png(8_000, 8_000, color_type=6), "max_preprocess_bytes"),
        (hostile.jpeg(8_000, 8_000, progressive=True), "max_preprocess_bytes"),
        (hostile.png(8_000, 8_000, bit_depth=16, color_type=0), "max_preprocess_bytes"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_hostile_headers_are_refused_naming_the_limit_and_the_value(data: bytes, limit: str) -> None:
    error = _refusal(data)
    assert error.limit == limit and error.value > error.cap
    assert limit in str(error) and isinstance(error, ImageDecodeError)  # so the API answers 422


def test_the_issue_file_is_88_bytes_and_refused_before_any_pixel_is_decoded() -> None:
    data = hostile.png(74_000, 1, bit_depth=1, color_type=0)
    assert len(data) == 88
    header = read_header(open_image(data), data)
    assert (header.width, header.height, header.aspect_ratio) == (74_000, 1, 74_000)
    with pytest.raises(ImageBudgetError, match=r"aspect ratio is 74000\.0"):
        check_budget(header, DecodeLimits(), [RESIZE])


def test_bit_depth_is_read_from_the_file_not_the_mode() -> None:
    data = hostile.png(64, 64, bit_depth=16, color_type=2)
    header = read_header(open_image(data), data)
    assert header.mode == "RGB" and header.bit_depth == 16
    assert decode_image(data, [RESIZE]).size == (64, 64)
    assert _refusal(data, DecodeLimits(max_bit_depth=8)).limit == "max_bit_depth"


def test_frames_are_counted_without_walking_past_the_cap() -> None:
    data = hostile.gif(8, 8, frames=50)
    assert read_header(open_image(data), data).frames == 50
    assert read_header(open_image(data), data, max_frames=10).frames == 11


def test_a_million_tiff_strips_are_refused_before_pillow_builds_its_strip_list() -> None:
    data = hostile.tiff(1_000, 1_000_000, blocks=1_000_000)
    with pytest.raises(ImageBudgetError, match="max_tiff_blocks"):
        open_image(data)


def test_cost_counts_the_resize_output_of_a_strip() -> None:
    """A 100:1 strip resized to a 256 px short side is 25600 x 256; the cap on bytes sees it."""
    strip = read_header(open_image(hostile.png(10_000, 100)), None)
    square = read_header(open_image(hostile.png(1_000, 1_000)), None)
    cost_strip = check_budget(strip, DecodeLimits(), [RESIZE])
    cost_square = check_budget(square, DecodeLimits(), [RESIZE])
    assert cost_strip > 4 * 25_600 * 256 > cost_square
    with pytest.raises(ImageBudgetError, match="max_preprocess_bytes"):
        check_budget(strip, DecodeLimits(max_preprocess_bytes=cost_strip - 1), [RESIZE])


def test_large_jpeg_decodes_at_draft_scale_with_the_same_model_input() -> None:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)
    photo = Image.fromarray(small).resize((2000, 1500), Image.Resampling.BICUBIC)  # smooth, like a photo
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=95)
    data = buffer.getvalue()
    drafted, header = decode_with_header(data, [RESIZE])
    full = decode_image(data)  # no specs: native resolution
    assert (header.width, header.height) == (2000, 1500) and full.size == (2000, 1500)
    assert 2 * 256 <= min(drafted.size) < 1500
    a, b = eval_transform(RESIZE)(drafted), eval_transform(RESIZE)(full)
    assert a.shape == b.shape and float((a - b).abs().mean()) < 0.02


@pytest.mark.parametrize("size", [(2000, 1500), (2600, 1950), (1950, 2600), (3001, 2251)])
def test_a_drafted_jpeg_arrives_at_the_size_its_full_decode_reduces_to(size) -> None:
    """DCT scaling steps by powers of two, the box reduce by any integer (here 2, 3, 3, 4): the decode ends at
    the reduce's size either way, so an eval-time re-save (CanonicalJPEG) happens at one size."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 80, 40)).save(buffer, "JPEG", quality=90)
    drafted, _ = decode_with_header(buffer.getvalue(), [RESIZE])
    factor = reduce_factor(size, [RESIZE])
    assert drafted.size == decode_image(buffer.getvalue()).reduce(factor).size
    assert reduce_factor(drafted.size, [RESIZE]) == 1


def test_a_crop_model_keeps_native_pixels() -> None:
    data = hostile.jpeg(3_000, 2_000)
    assert decode_image(data, [RESIZE, CROP]).size == (3_000, 2_000)
    assert decode_image(data, [RESIZE]).size[0] < 3_000


def test_serving_reports_the_budget_error_without_raising() -> None:
    prepared = prepare_image(hostile.png(74_000, 1, bit_depth=1, color_type=0), {"a": RESIZE.to_dict()})
    assert prepared.error and "max_aspect_ratio" in prepared.error and not prepared.tensors


def test_the_index_checks_the_budget_without_importing_torch() -> None:
    code = "import sys, genart.data.index; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# Sides a header may claim: small, anywhere up to 100k, and each format's extremes (clipped per format).
SIDES = st.one_of(
    st.integers(1, 64), st.integers(1, 100_000), st.sampled_from([1, 2, 8_000, 16_384, 65_535, 2**31 - 1])
)
ANIMATED = {"png": hostile.png, "gif": hostile.gif}


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox() as box:
        yield box


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(sorted(hostile.BUILDERS)),
    width=SIDES,
    height=SIDES,
    frames=st.sampled_from([1, 1, 2, 10_001]),
    specs=st.sampled_from(sorted(SPEC_SETS)),
)
def test_any_claimed_header_is_accepted_or_refused_within_512_mb(
    sandbox, fmt, width, height, frames, specs
) -> None:
    """Every format Pillow opens, any claimed size and aspect ratio: a usable image or a decode error, and a
    preprocessing peak under 512 MB, measured in a forked child. Wall time is recorded, not asserted."""
    width, height = min(width, hostile.FORMAT_MAX_SIDE[fmt]), min(height, hostile.FORMAT_MAX_SIDE[fmt])
    if fmt in ANIMATED and frames > 1:
        data = ANIMATED[fmt](width, height, frames=frames)
    else:
        data = hostile.BUILDERS[fmt](width, height)
    result = sandbox.measure(data, "budgeted", specs)
    note(f"{fmt} {width}x{height} x{frames} ({len(data)} bytes): {result}")
    event(f"{result.status}, wall {'under' if (result.wall_s or 0) < 2 else 'over'} 2 s")
    assert result.status in ("accepted", "refused", "error"), result
    assert result.peak_mb is not None and result.peak_mb < 512, result
