import numpy as np
import pytest
import timm
import torch
from PIL import Image

from genart.config import AugmentConfig, DecodeLimits
from genart.data.headers import reduce_factor
from genart.data.transforms import (
    ImageDecodeError,
    InputSpec,
    RandomJPEG,
    decode_image,
    eval_transform,
    jpeg_resave,
    matched_eval_transform,
    normalize,
    rescale,
    train_transform,
)
from tests.conftest import image_bytes, png_bomb

SPECS = [
    InputSpec(64, crop_policy="crop"),
    InputSpec(64, crop_policy="resize", mean=(0.5,) * 3, std=(0.5,) * 3),
    InputSpec(64, crop_policy="resize", jpeg_quality=90),
]


def _spec_id(spec: InputSpec) -> str:
    return spec.crop_policy + (f"-jpeg{spec.jpeg_quality}" if spec.jpeg_quality else "")


@pytest.mark.parametrize("spec", SPECS, ids=_spec_id)
@pytest.mark.parametrize("size", [(32, 20), (64, 64), (300, 151)])
def test_transforms_give_normalised_float_tensors_of_the_input_size(spec: InputSpec, size) -> None:
    image = decode_image(image_bytes(size))
    for transform in (
        eval_transform(spec),
        train_transform(spec, AugmentConfig(jpeg_p=1, rescale_p=1, blur_p=1)),
    ):
        out = transform(image)
        assert out.shape == (3, 64, 64) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
        lo = min((0 - m) / s for m, s in zip(spec.mean, spec.std, strict=True))
        hi = max((1 - m) / s for m, s in zip(spec.mean, spec.std, strict=True))
        assert lo - 1e-4 <= out.min() and out.max() <= hi + 1e-4


@pytest.mark.parametrize("spec", SPECS, ids=_spec_id)
def test_uint8_transforms_then_normalize_equal_the_float_transforms(spec: InputSpec) -> None:
    import random

    image = decode_image(image_bytes((300, 151)))
    augment = AugmentConfig(jpeg_p=1, rescale_p=1, blur_p=1)
    pairs = [(eval_transform(spec), eval_transform(spec, as_uint8=True))]
    pairs.append((train_transform(spec, augment), train_transform(spec, augment, as_uint8=True)))
    for float_transform, uint8_transform in pairs:
        random.seed(3), torch.manual_seed(3)
        expected = float_transform(image)
        random.seed(3), torch.manual_seed(3)
        raw = uint8_transform(image)
        assert raw.dtype == torch.uint8 and raw.shape == (3, 64, 64)
        out = normalize(raw[None], spec)[0]
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, expected, atol=0, rtol=0)  # bit for bit (see normalize)


def test_normalize_refuses_images_that_are_already_float() -> None:
    spec = SPECS[0]
    floats = eval_transform(spec)(decode_image(image_bytes((80, 80))))[None]
    with pytest.raises(TypeError, match="as_uint8=True"):
        normalize(floats, spec)


def test_crop_policy_never_resamples_pixels() -> None:
    array = np.random.default_rng(0).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    spec = InputSpec(64, mean=(0.0,) * 3, std=(1.0,) * 3, crop_policy="crop")
    out = eval_transform(spec)(Image.fromarray(array))
    expected = array[18:82, 28:92].transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)


def test_eval_transform_is_deterministic() -> None:
    image = decode_image(image_bytes((90, 70)))
    for spec in SPECS:
        assert torch.equal(eval_transform(spec)(image), eval_transform(spec)(image))


@pytest.mark.parametrize(
    ("crop_policy", "size", "factor"),
    [("crop", (300, 151), 1), ("resize", (300, 151), 1), ("resize", (1200, 900), 6)],
)
def test_canonical_jpeg_re_saves_the_image_as_decoding_reduces_it(crop_policy, size, factor) -> None:
    image = decode_image(image_bytes(size))
    plain = InputSpec(64, crop_policy=crop_policy)
    spec = InputSpec(64, crop_policy=crop_policy, jpeg_quality=80)
    assert reduce_factor(size, [spec]) == factor  # resize to 73 px: box-reduced while over 146
    reduced = image.reduce(factor) if factor > 1 else image
    expected = eval_transform(plain)(jpeg_resave(reduced, 80))
    assert torch.equal(eval_transform(spec)(image), expected)
    assert not torch.equal(expected, eval_transform(plain)(reduced))  # the re-save changed pixels
    # training views keep their own random re-save: the canonical one belongs to the eval transform
    assert "CanonicalJPEG" not in repr(train_transform(spec))


@pytest.mark.parametrize("side", [40, 120])
def test_the_class_matched_eval_view_resizes_and_re_saves_then_applies_the_eval_transform(side) -> None:
    image = decode_image(image_bytes((300, 151)))
    spec = InputSpec(64, crop_policy="resize", jpeg_quality=80)
    resized = rescale(image, side / 151)
    # no random re-save: the resize, then exactly the eval transform, whose re-save happens at the new size
    plain = AugmentConfig(short_side=(side, side), jpeg_p=0.0)
    expected = eval_transform(spec)(resized)
    assert torch.equal(matched_eval_transform(spec, plain)(image), expected)
    assert not torch.equal(expected, eval_transform(spec)(image))  # the size it is re-saved at shows
    # with the random re-save (quality fixed): that re-save, then the eval transform's own
    resaved = AugmentConfig(short_side=(side, side), jpeg_p=1.0, jpeg_quality=(70, 70))
    expected = eval_transform(spec)(jpeg_resave(resized, 70))
    assert torch.equal(matched_eval_transform(spec, resaved)(image), expected)


def test_an_input_spec_written_before_canonical_jpeg_reads_as_off() -> None:
    raw = InputSpec(64).to_dict()
    del raw["jpeg_quality"]
    assert InputSpec.from_dict(raw).jpeg_quality is None


def test_input_spec_comes_from_timm_and_round_trips() -> None:
    model = timm.create_model("resnet18", pretrained=False, num_classes=2)
    spec = InputSpec.from_timm(timm.data.resolve_model_data_config(model), crop_policy="crop")
    assert spec.input_size == 224 and spec.mean == (0.485, 0.456, 0.406) and spec.crop_policy == "crop"
    assert InputSpec.from_dict(spec.to_dict()) == spec
    assert InputSpec.from_dict({**spec.to_dict(), "unknown": 1}) == spec


def test_decode_applies_exif_orientation_and_makes_rgb() -> None:
    import io

    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue()).size == (20, 40)
    for mode in ("CMYK", "L", "P", "RGBA", "LA", "I;16"):
        fmt = "JPEG" if mode == "CMYK" else "PNG" if mode != "P" else "GIF"
        decoded = decode_image(image_bytes((30, 30), fmt, mode=mode))
        assert decoded.mode == "RGB" and decoded.size == (30, 30)


def test_decode_composites_transparency_on_white() -> None:
    import io

    buffer = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(buffer, format="PNG")
    assert decode_image(buffer.getvalue()).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"<html>not an image</html>", "not a recognised image"),
        (image_bytes((64, 64), "JPEG")[:300], "(?i)truncated"),
        (image_bytes((64, 64), "JPEG")[:-200], "(?i)truncated"),
        (png_bomb(), "pixels"),
    ],
)
def test_decode_rejects_bad_bytes_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=message):
        decode_image(data)


def test_decode_respects_a_lower_pixel_limit() -> None:
    with pytest.raises(ImageDecodeError, match="limit"):
        decode_image(image_bytes((100, 100)), limits=DecodeLimits(max_pixels=5000))


def test_degradations_change_pixels_as_described() -> None:
    image = decode_image(image_bytes((64, 64)))
    resaved = jpeg_resave(image, 50)
    assert resaved.size == image.size and resaved.tobytes() != image.tobytes()
    assert rescale(image, 0.5).size == (32, 32)
    assert RandomJPEG(p=0.0, quality=(50, 50))(image) is image
    assert RandomJPEG(p=1.0, quality=(50, 50))(image).tobytes() == resaved.tobytes()


def test_augment_config_validates_quality_range() -> None:
    with pytest.raises(ValueError, match="jpeg_quality"):
        AugmentConfig(jpeg_quality=(90, 50))
