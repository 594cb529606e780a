"""THE preprocessing: decoding, the eval transform and the train augmentations.

Training, evaluation, Ray Data, serving and export all call these functions; nothing else in genart
resizes, crops or normalises an image. A model's input policy (:class:`InputSpec`) comes from timm's data
config and is stored in every artefact, so a served model sees exactly what it was trained on.

Two policies exist. ``resize`` is timm's standard (resize the short side, centre-crop by ``crop_pct``),
right for content models fine-tuned from ImageNet. ``crop`` never resamples: it takes a window at native
resolution (padding by reflection when the image is smaller), because resampling destroys the
pixel-level correlations that artefact detectors look for.
"""

from __future__ import annotations

import functools
import io
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from PIL import Image, ImageFilter, ImageOps
from timm.data import create_transform
from torchvision import transforms as T

from genart.config import AugmentConfig, CropPolicy, DecodeLimits
from genart.data.headers import (
    REDUCIBLE_MODES,
    ImageBudgetError,
    ImageDecodeError,
    ImageHeader,
    check_budget,
    open_image,
    read_header,
    reduce_factor,
    reduced_size,
)

__all__ = [
    "DEGRADATIONS",
    "CanonicalJPEG",
    "ImageBudgetError",
    "ImageDecodeError",
    "InputSpec",
    "RandomBlur",
    "RandomJPEG",
    "RandomRescale",
    "RandomShortSide",
    "decode_image",
    "decode_with_header",
    "eval_transform",
    "jpeg_resave",
    "matched_eval_transform",
    "normalize",
    "rescale",
    "train_transform",
]


Transform = Callable[[Image.Image], torch.Tensor]


@dataclass(frozen=True)
class InputSpec:
    """What a model expects: size, normalisation and how an image is brought to that size."""

    input_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    crop_policy: CropPolicy = "resize"
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    #: Eval-time JPEG canonicalisation (:class:`CanonicalJPEG`): every image the model judges is first
    #: re-saved as JPEG at this quality, at the size decoding reduces it to, so that a lossless original
    #: and a JPEG one reach the model alike. ``None``: off. Training views draw their own re-save.
    jpeg_quality: int | None = None

    @classmethod
    def from_timm(cls, data_config: dict[str, Any], crop_policy: CropPolicy = "resize") -> InputSpec:
        """Build from ``timm.data.resolve_model_data_config(model)``, the single source of a model's input."""
        size = data_config["input_size"]
        return cls(
            input_size=int(size[-1]),
            mean=tuple(float(x) for x in data_config["mean"]),
            std=tuple(float(x) for x in data_config["std"]),
            crop_policy=crop_policy,
            crop_pct=float(data_config.get("crop_pct", 0.875)),
            interpolation=str(data_config.get("interpolation", "bicubic")),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> InputSpec:
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


def decode_image(
    data: bytes,
    specs: Sequence[InputSpec] = (),
    limits: DecodeLimits | None = None,
    augmented: bool = False,
) -> Image.Image:
    """Decode bytes to an upright RGB image within the decoding budget (see :func:`decode_with_header`)."""
    return decode_with_header(data, specs, limits, augmented)[0]


def decode_with_header(
    data: bytes,
    specs: Sequence[InputSpec] = (),
    limits: DecodeLimits | None = None,
    augmented: bool = False,
) -> tuple[Image.Image, ImageHeader]:
    """Decode bytes to an upright RGB image within the decoding budget, or raise :class:`ImageDecodeError`.

    Returns the image and the header it was decoded from (the image may be smaller than the header says).

    The header is read first and :func:`~genart.data.headers.check_budget` refuses, with
    :class:`ImageBudgetError`, anything whose decode and transform for ``specs`` would pass ``limits``;
    only then is a pixel decoded. When every spec resizes, and the image is not ``augmented`` (training and
    the robustness degradations work on the full image), decoding takes the cheapest path to the model's
    input: an integer box reduce that stops at twice the resize target, as Pillow's thumbnail does
    (:func:`~genart.data.headers.reduce_factor`). A JPEG gets there by DCT scaling (``draft``, powers of two)
    and a box resample to exactly the size the reduce of its full decode has, so an image reaches the
    transforms (and :class:`CanonicalJPEG` its re-save) at one size, however it was decoded.

    EXIF orientation is applied, palette/CMYK/greyscale become RGB, and transparency is composited on white.
    """
    limits = limits or DecodeLimits()
    image = open_image(data, limits)
    header = read_header(image, data, limits.max_frames)
    factor = 1 if augmented else reduce_factor((header.width, header.height), specs)
    reduced = reduced_size((header.width, header.height), factor)
    drafted = None
    if factor > 1 and header.format in ("JPEG", "MPO"):
        image.draft(None, reduced)
        drafted = image.size
    check_budget(header, limits, specs, augmented, decoded_size=drafted)
    try:
        image.load()
        upright = (image.getexif().get(0x0112, 1) or 1) == 1  # after load: a PNG's eXIf may follow its pixels
        if factor > 1 and image.size != reduced:
            if image.mode not in REDUCIBLE_MODES:
                image = image.convert(
                    "I" if image.mode.startswith("I;16") else "RGBA" if header.transparency else "RGB"
                )
            # DCT scaling steps by powers of two: a box resample finishes at the size a full decode reduces to
            image = image.reduce(factor) if drafted is None else image.resize(reduced, Image.Resampling.BOX)
        if not upright:  # exif_transpose copies even an upright image
            image = ImageOps.exif_transpose(image)
        return _to_rgb(image), header
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
    return image.convert("RGB")


def jpeg_resave(image: Image.Image, quality: int) -> Image.Image:
    """Re-encode as JPEG at ``quality`` and decode again, as a re-save or an upload would."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as resaved:
        return resaved.convert("RGB")


def rescale(image: Image.Image, factor: float) -> Image.Image:
    """Scale both sides by ``factor`` with antialiasing, as a thumbnail would be made."""
    width, height = image.size
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=None)


#: The robustness conditions evaluation reports: a re-save at high and at web quality, and a thumbnail.
DEGRADATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "jpeg96": functools.partial(jpeg_resave, quality=96),
    "jpeg75": functools.partial(jpeg_resave, quality=75),
    "half": functools.partial(rescale, factor=0.5),
}


class RandomJPEG:
    """With probability ``p``, re-save as JPEG at a quality drawn from ``quality``."""

    def __init__(self, p: float, quality: tuple[int, int]) -> None:
        self.p, self.quality = p, quality

    def __call__(self, image: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return image
        return jpeg_resave(image, random.randint(*self.quality))


class RandomRescale:
    """With probability ``p``, rescale by a factor drawn from ``scale``."""

    def __init__(self, p: float, scale: tuple[float, float]) -> None:
        self.p, self.scale = p, scale

    def __call__(self, image: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return image
        return rescale(image, random.uniform(*self.scale))


class RandomShortSide:
    """Resize so the short side is a random length in ``sides`` (both classes alike, so that native size and
    the down-scaling it implies cannot separate them); ``None`` leaves the image as it is."""

    def __init__(self, sides: tuple[int, int] | None) -> None:
        self.sides = sides

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.sides is None:
            return image
        return rescale(image, random.randint(*self.sides) / min(image.size))


class RandomBlur:
    """With probability ``p``, Gaussian blur with a sigma drawn from ``sigma``."""

    def __init__(self, p: float, sigma: tuple[float, float]) -> None:
        self.p, self.sigma = p, sigma

    def __call__(self, image: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return image
        return image.filter(ImageFilter.GaussianBlur(random.uniform(*self.sigma)))


class PadToSize:
    """Reflect-pad an image up to ``size`` on each side, so a native-resolution crop never sees black bars."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        if width >= self.size and height >= self.size:
            return image
        tensor = T.functional.pil_to_tensor(image)
        pad_w, pad_h = max(0, self.size - width), max(0, self.size - height)
        padding = [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2]
        # Reflection needs padding smaller than the side; tiny images fall back to edge replication.
        mode = "reflect" if pad_w < width and pad_h < height else "edge"
        return T.functional.to_pil_image(T.functional.pad(tensor, padding, padding_mode=mode))


def _timm_transform(
    spec: InputSpec, is_training: bool, hflip: float = 0.0, as_uint8: bool = False
) -> Transform:
    """timm's own recipe for the ``resize`` policy, with colour jitter off (colour is a signal here).

    ``as_uint8`` is timm's ``use_prefetcher``: the transform stops at a uint8 tensor and leaves normalising
    to the consumer (:func:`normalize`)."""
    return create_transform(
        input_size=(3, spec.input_size, spec.input_size),
        is_training=is_training,
        scale=(0.5, 1.0),
        hflip=hflip,
        color_jitter=0.0,
        interpolation=spec.interpolation,
        mean=spec.mean,
        std=spec.std,
        crop_pct=spec.crop_pct,
        use_prefetcher=as_uint8,
    )


def _native_crop(
    spec: InputSpec, random_crop: bool, hflip: float = 0.0, as_uint8: bool = False
) -> list[Callable[..., Any]]:
    crop = T.RandomCrop(spec.input_size) if random_crop else T.CenterCrop(spec.input_size)
    flips = [T.RandomHorizontalFlip(hflip)] if hflip > 0 else []
    finish = [T.PILToTensor()] if as_uint8 else [T.ToTensor(), T.Normalize(mean=spec.mean, std=spec.std)]
    return [PadToSize(spec.input_size), crop, *flips, *finish]


def normalize(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Finish what a transform built with ``as_uint8=True`` left: uint8 (N, 3, H, W) on any device to the
    model's normalised float32, bit for bit the values of ``ToTensor`` then ``Normalize`` (timm's prefetcher
    does the same on the GPU).

    Handing uint8 batches across processes moves a quarter of the bytes of float32 ones; the Ray Data
    training pipeline does it, and the train loop normalises on its device.
    """
    if images.dtype != torch.uint8:
        raise TypeError(
            f"normalize takes the uint8 images of a transform built with as_uint8=True, got {images.dtype}: "
            "build the dataset with make_dataset(..., as_uint8=True)"
        )
    # The very operations of ToTensor then Normalize, in their order and in float32, so that the values are
    # bit for bit the same. The frozen INT8 CLIP encoder quantises its activations on the fly: with the
    # earlier (x - 255 mean) / (255 std), at most 2e-7 away, a real-sample face went from P(ai) 0.93 to 0.63.
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return images.float().div_(255).sub_(mean).div_(std)


class CanonicalJPEG:
    """An image box-reduced as decoding reduces it for ``spec`` (:func:`reduce_factor`: to under twice the
    resize target), then re-saved as JPEG at ``spec.jpeg_quality``.

    The size is part of the rule: a re-save at a 12-megapixel phone photo's native size, then a 16x
    down-scale, made such photos look generated (real-sample, README); at the model's 224 px it left the
    leave-one-source-out figures where they were. An image :func:`decode_with_header` already reduced is
    reduced no further: it arrives at the size the reduce of its full decode has, whether JPEG DCT scaling
    got it there (serving, and the frozen encoders' eval view) or not.
    """

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec

    def __call__(self, image: Image.Image) -> Image.Image:
        factor = reduce_factor(image.size, [self.spec])
        return jpeg_resave(image.reduce(factor) if factor > 1 else image, int(self.spec.jpeg_quality))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(quality={self.spec.jpeg_quality})"


def eval_transform(spec: InputSpec, as_uint8: bool = False) -> Transform:
    """The deterministic transform used by evaluation, serving and export parity checks.

    With ``spec.jpeg_quality`` set, :class:`CanonicalJPEG` comes first. ``as_uint8``: stop before
    normalising, at a uint8 tensor; :func:`normalize` finishes it."""
    if spec.crop_policy == "crop":
        geometry: Transform = T.Compose(_native_crop(spec, random_crop=False, as_uint8=as_uint8))
    else:
        geometry = _timm_transform(spec, is_training=False, as_uint8=as_uint8)
    return T.Compose([CanonicalJPEG(spec), geometry]) if spec.jpeg_quality is not None else geometry


def train_transform(
    spec: InputSpec, augment: AugmentConfig | None = None, as_uint8: bool = False
) -> Transform:
    """Training augmentations, then the same geometry and normalisation policy as :func:`eval_transform`.

    Degradations come first and in the order the web applies them: blur, thumbnailing, then a JPEG
    re-save. The crop is random (native resolution for ``crop``, random-resized for ``resize``).
    ``as_uint8``: stop before normalising, at a uint8 tensor; :func:`normalize` finishes it.
    """
    aug = augment or AugmentConfig()
    degrade = [
        RandomBlur(aug.blur_p, aug.blur_sigma),
        RandomRescale(aug.rescale_p, aug.rescale_range),
        RandomShortSide(aug.short_side),
        RandomJPEG(aug.jpeg_p, aug.jpeg_quality),
    ]
    if spec.crop_policy == "crop":
        return T.Compose(
            [*degrade, *_native_crop(spec, random_crop=True, hflip=aug.hflip, as_uint8=as_uint8)]
        )
    return T.Compose([*degrade, _timm_transform(spec, is_training=True, hflip=aug.hflip, as_uint8=as_uint8)])


def matched_eval_transform(spec: InputSpec, augment: AugmentConfig | None = None) -> Transform:
    """The class-matched eval view: both classes resized to a random short side (``augment.short_side``)
    and re-saved at a random JPEG quality (``jpeg_p``, ``jpeg_quality``) alike, then exactly
    :func:`eval_transform`, its eval-time JPEG included.

    What it is for: the eval transform re-saves an image at about the size decoding leaves it, so a large
    image's re-save blocks all but vanish in the resize to the model's input and a small image's stay
    visible. In the wild training data the AI images are large and the photos small, so in the plain eval
    view visible blocks mean "photo", and a thumbnail of an AI image was judged a photo (README, "Half
    size"). Here the size the re-save happens at is drawn alike for both classes.
    """
    aug = augment or AugmentConfig()
    return T.Compose(
        [RandomShortSide(aug.short_side), RandomJPEG(aug.jpeg_p, aug.jpeg_quality), eval_transform(spec)]
    )
