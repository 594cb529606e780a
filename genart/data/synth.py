"""The generated sample dataset: real photo crops and seven imitated generator artefacts, in GenImage layout.

This dataset is for running the system (demos, CI, smoke tests of training, evaluation and serving), not
for measuring real-world accuracy. Its "AI" images come from no generative model: they are crops of real
photographs passed through a hand-written imitation of one generator family's artefacts. A detector that
does well here has learned these imitations and says nothing about GenImage or images in the wild.

``synthesize`` writes ``<generator>/<train|val>/<ai|nature>/<generator>_<split>_<label>_<i>.<png|jpg>``
for the seven Tiny GenImage generator folders (or any others), plus ``SYNTH.md`` describing the run.

*Nature* images are crops of the colour and greyscale photographs that ship inside installed wheels
(scikit-image's bundled ``skimage.data`` files, scikit-learn's sample images, matplotlib's sample data),
read straight from disk so that nothing is ever downloaded. Each crop has a random photo, position,
scale in [0.5, 1] (antialiased, so crops stay sharp) and horizontal flip. *AI* images are drawn from the
same pool with the same randomness, then passed through their folder's family:

- ``imagenet_ai_0419_biggan``: GAN transposed-convolution upsampling. A 2x area downsample, then zero
  insertion and a fixed 3x3 kernel whose four stride phases have unequal gains: a checkerboard with
  period 2 whose strength follows intensity (peaks at the Nyquist frequency).
- ``imagenet_ai_0419_vqdm``: vector-quantised tokens. 4x4 blocks are averaged and snapped to a 32-colour
  k-means codebook, decoded half nearest, half bicubic, with half the original detail added back
  (colour banding and faint seams on the 4-pixel token grid).
- ``imagenet_ai_0424_sdv5``: latent-diffusion autoencoder. 8x area downsample, bicubic decode with a
  third of the detail back, plus a faint fixed 8-pixel-periodic decoder texture.
- ``imagenet_ai_0424_wukon``: the same latent family at factor 4 with half the detail back, a fixed
  4-periodic texture and an unsharp-mask sharpening (halos).
- ``imagenet_ai_0508_adm``: pixel-space diffusion. Gaussian smoothing then a fixed-sigma Gaussian noise
  residual in every channel.
- ``imagenet_glide``: cascaded 64->256 upsampler. Bilinear 4x down and up, a quarter of the detail back,
  and a strong wide unsharp mask.
- ``imagenet_midjourney``: upscaled and post-processed. A 2x down and bicubic up with half the detail
  back, median (painterly) smoothing, raised saturation, an S-shaped contrast curve and a warm tint.

A generator folder outside the seven maps onto one of these families by a stable hash of its name
(``family_of``), so any set of folder names works.

``formats="trap"`` copies the benchmark's confound (nature as JPEG quality 90-95, ai as PNG), so that a
model can be seen to learn the container instead of the content; ``formats="match"`` writes everything as
PNG. Each image's randomness is derived from ``(seed, generator, split, label, index)`` alone, so a seed
gives byte-identical files whatever the worker count or order.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image, ImageFilter
from tqdm import tqdm

from genart.data.index import process_pool
from genart.data.layout import GENIMAGE_GENERATORS, LABEL_AI, LABEL_NATURE, canonical_generator

__all__ = [
    "FAMILIES",
    "SynthFormats",
    "SynthSummary",
    "apply_family",
    "family_of",
    "nature_crop",
    "photo_names",
    "synthesize",
]

SynthFormats = Literal["trap", "match"]

#: One line per generator family, keyed by the GenImage generator folder that uses it.
FAMILIES: dict[str, str] = {
    "imagenet_ai_0419_biggan": "GAN upsampling: 2x down, transposed-conv upsample with uneven phase gains "
    "(intensity-modulated checkerboard, Nyquist peak)",
    "imagenet_ai_0419_vqdm": "VQ tokens: 4x4 blocks snapped to a 32-colour k-means codebook, half-nearest "
    "decode, 1/2 detail (banding, token-grid seams)",
    "imagenet_ai_0424_sdv5": "latent diffusion: 8x area down, bicubic decode keeping 1/3 detail, faint fixed "
    "8-periodic decoder texture",
    "imagenet_ai_0424_wukon": "latent diffusion: 4x area down, bicubic decode keeping 1/2 detail, fixed "
    "4-periodic texture, unsharp sharpening",
    "imagenet_ai_0508_adm": "pixel diffusion: Gaussian smoothing (sigma 0.8) plus Gaussian noise residual "
    "(sigma 3 levels)",
    "imagenet_glide": "cascaded upsampler: bilinear 4x down and up, 1/4 detail back, strong wide "
    "unsharp mask",
    "imagenet_midjourney": "upscaled aesthetic look: 2x down and bicubic up, median (painterly) smoothing, "
    "+30% saturation, S-curve contrast, warm tint",
}

_SPLITS = ("train", "val")
_LABELS = (LABEL_NATURE, LABEL_AI)
_FORMATS: tuple[str, ...] = ("trap", "match")
_MIN_SIZE = 32
_JPEG_QUALITY = (90, 95)
# Photos larger than this on their shorter side are reduced on load, so that a crop of a high-resolution
# source still shows a scene rather than a patch of flat texture.
_MAX_SHORT_SIDE = 512

# (package, path inside the package, name). Only files that ship in the wheels: skimage.data's loader
# functions would fetch the others with pooch, and there may be no network.
_PHOTO_SOURCES: tuple[tuple[str, str, str], ...] = (
    ("skimage", "data/astronaut.png", "astronaut"),
    ("skimage", "data/chelsea.png", "chelsea"),
    ("skimage", "data/coffee.png", "coffee"),
    ("skimage", "data/motorcycle_left.png", "motorcycle"),
    ("skimage", "data/rocket.jpg", "rocket"),
    ("skimage", "data/hubble_deep_field.jpg", "hubble_deep_field"),
    ("skimage", "data/camera.png", "camera"),
    ("skimage", "data/brick.png", "brick"),
    ("skimage", "data/grass.png", "grass"),
    ("skimage", "data/gravel.png", "gravel"),
    ("sklearn", "datasets/images/china.jpg", "china"),
    ("sklearn", "datasets/images/flower.jpg", "flower"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "grace_hopper"),
)


@dataclass(frozen=True)
class SynthSummary:
    """What ``synthesize`` wrote: the root, the number of images, the time taken, images per generator."""

    root: Path
    files: int
    seconds: float
    counts: dict[str, int]


class _Job(NamedTuple):
    root: str
    generator: str
    split: str
    label: str
    index: int
    size: int
    seed: int
    formats: str


# ---------------------------------------------------------------------------------------------- photos


@functools.lru_cache(maxsize=1)
def _photo_pool() -> tuple[tuple[str, Image.Image], ...]:
    photos = []
    for package, relpath, name in _PHOTO_SOURCES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(next(iter(spec.submodule_search_locations))) / relpath
        if not path.is_file():
            continue
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        short = min(image.size)
        if short > _MAX_SHORT_SIDE:
            scale = _MAX_SHORT_SIDE / short
            image = image.resize(
                (round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS
            )
        photos.append((name, image))
    if not photos:
        raise RuntimeError(
            "No bundled photographs found for the synthetic dataset; install scikit-image, scikit-learn "
            "or matplotlib (all are genart dependencies)."
        )
    return tuple(photos)


def photo_names() -> tuple[str, ...]:
    """The names of the photographs in the pool, in the order crops pick them from."""
    return tuple(name for name, _ in _photo_pool())


def nature_crop(size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size`` x ``size`` RGB crop of a pool photograph: random photo, position, scale and flip."""
    pool = _photo_pool()
    _, photo = pool[int(rng.integers(len(pool)))]
    short = min(photo.size)
    # Scale < 1 only ever reduces the photo, so the crop stays as sharp as the source; a crop larger than
    # the photo has to upsample (scale > 1).
    low = max(0.5, size / short)
    scale = float(rng.uniform(low, max(1.0, low)))
    side = min(size / scale, short)
    x0 = float(rng.uniform(0.0, photo.width - side))
    y0 = float(rng.uniform(0.0, photo.height - side))
    flip = bool(rng.random() < 0.5)
    crop = photo.resize((size, size), Image.Resampling.LANCZOS, box=(x0, y0, x0 + side, y0 + side))
    array = np.asarray(crop, dtype=np.uint8)
    return np.ascontiguousarray(array[:, ::-1]) if flip else array.copy()


# ---------------------------------------------------------------------------------------------- families


def family_of(generator: str) -> str:
    """The GenImage generator whose family renders ``generator``'s AI images.

    The seven GenImage folders (and their alternative spellings) use their own family; any other name is
    assigned one by a CRC-32 of its canonical name, which is stable across runs, machines and Python versions.
    """
    name = canonical_generator(generator)
    if name in FAMILIES:
        return name
    return GENIMAGE_GENERATORS[zlib.crc32(name.encode("utf-8")) % len(GENIMAGE_GENERATORS)]


def apply_family(generator: str, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pass an ``HxWx3`` ``uint8`` image through ``generator``'s artefact family; same shape and dtype out."""
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"apply_family expects an HxWx3 uint8 image, got shape {img.shape} {img.dtype}")
    if min(img.shape[:2]) < 16:
        raise ValueError(f"apply_family needs an image of at least 16x16 pixels, got {img.shape[:2]}")
    out = _FAMILY_FUNCTIONS[family_of(generator)](img.astype(np.float32), rng)
    return _to_uint8(out)


def _biggan(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    low = _resize(x, w // 2, h // 2, Image.Resampling.BOX)
    zeros = np.zeros((2 * low.shape[0], 2 * low.shape[1], 3), np.float32)
    zeros[::2, ::2] = low
    # Reflection keeps the zero-inserted grid's parity at the borders, so the edges get the same pattern.
    padded = np.pad(zeros, ((1, 1), (1, 1), (0, 0)), mode="reflect")
    kernel = _checkerboard_kernel()
    out = np.zeros_like(zeros)
    for dy in range(3):
        for dx in range(3):
            out += kernel[dy, dx] * padded[dy : dy + zeros.shape[0], dx : dx + zeros.shape[1]]
    return np.pad(out, ((0, h - out.shape[0]), (0, w - out.shape[1]), (0, 0)), mode="edge")


@functools.lru_cache(maxsize=1)
def _checkerboard_kernel() -> np.ndarray:
    # The bilinear kernel gives each of the four stride-2 output phases a total gain of exactly 1; scaling
    # its taps unevenly gives phase gains (1+a, 1-a, 1-a/2, 1+a/2), the classic deconvolution checkerboard.
    # A slightly different amplitude per channel tints the pattern, as learnt kernels do.
    bilinear = np.outer([0.5, 1.0, 0.5], [0.5, 1.0, 0.5])
    kernel = np.empty((3, 3, 3), np.float32)
    for c, a in enumerate((0.04, 0.03, 0.05)):
        gains = np.array(
            [[1 + a / 2, 1 - a / 2, 1 + a / 2], [1 - a, 1 + a, 1 - a], [1 + a / 2, 1 - a / 2, 1 + a / 2]]
        )
        kernel[:, :, c] = bilinear * gains
    return kernel


def _vqdm(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    low = _resize(x, w // 4, h // 4, Image.Resampling.BOX)
    points = low.reshape(-1, 3)
    codebook = _kmeans(points, min(32, len(points)), rng, iterations=8)
    assign = np.argmin(((points[:, None, :] - codebook[None]) ** 2).sum(-1), axis=1)
    tokens = codebook[assign].reshape(low.shape)
    # Half nearest, half bicubic: a patch decoder leaves faint seams on the 4-pixel token grid.
    decoded = 0.5 * _resize(tokens, w, h, Image.Resampling.NEAREST) + 0.5 * _resize(
        tokens, w, h, Image.Resampling.BICUBIC
    )
    detail = x - _resize(low, w, h, Image.Resampling.BICUBIC)
    return decoded + 0.5 * detail


def _kmeans(points: np.ndarray, k: int, rng: np.random.Generator, iterations: int) -> np.ndarray:
    codebook = points[rng.choice(len(points), size=k, replace=False)].astype(np.float64)
    for _ in range(iterations):
        assign = np.argmin(((points[:, None, :] - codebook[None]) ** 2).sum(-1), axis=1)
        counts = np.bincount(assign, minlength=k)
        for c in range(3):
            sums = np.bincount(assign, weights=points[:, c], minlength=k)
            # An empty code keeps its old value rather than collapsing to 0 (black).
            codebook[:, c] = np.where(counts > 0, sums / np.maximum(counts, 1), codebook[:, c])
    return codebook.astype(np.float32)


def _latent(x: np.ndarray, factor: int, keep: float, texture: float) -> np.ndarray:
    h, w = x.shape[:2]
    low = _resize(x, max(1, w // factor), max(1, h // factor), Image.Resampling.BOX)
    up = _resize(low, w, h, Image.Resampling.BICUBIC)
    tile = _decoder_tile(factor)
    reps = (-(-h // factor), -(-w // factor), 1)
    pattern = np.tile(tile, reps)[:h, :w]
    # Decoder textures are strongest in bright, detailed areas; modulating by luma keeps shadows clean.
    brightness = 0.5 + _luma(up)[..., None] / 255.0
    return up + keep * (x - up) + texture * pattern * brightness


@functools.lru_cache(maxsize=4)
def _decoder_tile(period: int) -> np.ndarray:
    # A fixed pattern per factor, identical in every image: a decoder's fingerprint, not per-image noise.
    tile = np.random.default_rng([0x5D, period]).standard_normal((period, period, 3))
    return ((tile - tile.mean()) / tile.std()).astype(np.float32)


def _sdv5(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _latent(x, factor=8, keep=1 / 3, texture=2.0)


def _wukon(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _unsharp(_latent(x, factor=4, keep=0.5, texture=2.0), sigma=1.0, amount=1.0)


def _adm(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _gaussian(x, sigma=0.8) + rng.normal(0.0, 3.0, size=x.shape).astype(np.float32)


def _glide(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    low = _resize(x, max(1, w // 4), max(1, h // 4), Image.Resampling.BILINEAR)
    up = _resize(low, w, h, Image.Resampling.BILINEAR)
    return _unsharp(up, sigma=2.0, amount=1.5) + 0.25 * (x - up)


def _midjourney(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    # Rendered at half size and upscaled, as its upscaler does, before the painterly median.
    low = _resize(x, max(1, w // 2), max(1, h // 2), Image.Resampling.LANCZOS)
    up = _resize(low, w, h, Image.Resampling.BICUBIC)
    upscaled = up + 0.5 * (x - up)
    smooth = Image.fromarray(_to_uint8(upscaled)).filter(ImageFilter.MedianFilter(3))
    y = np.asarray(smooth, dtype=np.float32)
    luma = _luma(y)[..., None]
    y = luma + float(rng.uniform(1.2, 1.4)) * (y - luma)
    t = np.clip(y / 255.0, 0.0, 1.0)
    t = 0.55 * t + 0.45 * t * t * (3.0 - 2.0 * t)
    return t * 255.0 * np.array([1.04, 1.0, 0.94], np.float32) + np.array([3.0, 1.0, 0.0], np.float32)


_FAMILY_FUNCTIONS = {
    "imagenet_ai_0419_biggan": _biggan,
    "imagenet_ai_0419_vqdm": _vqdm,
    "imagenet_ai_0424_sdv5": _sdv5,
    "imagenet_ai_0424_wukon": _wukon,
    "imagenet_ai_0508_adm": _adm,
    "imagenet_glide": _glide,
    "imagenet_midjourney": _midjourney,
}


def _resize(x: np.ndarray, width: int, height: int, resample: Image.Resampling) -> np.ndarray:
    # PIL's float mode resizes without quantising to 8 bits; it takes one channel at a time.
    channels = [
        Image.fromarray(np.ascontiguousarray(x[..., c]), mode="F").resize((width, height), resample)
        for c in range(x.shape[2])
    ]
    return np.stack([np.asarray(channel) for channel in channels], axis=-1)


def _gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(3 * sigma + 0.5))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    h, w = x.shape[:2]
    padded = np.pad(x, ((radius, radius), (0, 0), (0, 0)), mode="reflect")
    rows = sum(t * padded[i : i + h] for i, t in enumerate(taps))
    padded = np.pad(rows, ((0, 0), (radius, radius), (0, 0)), mode="reflect")
    return sum(t * padded[:, i : i + w] for i, t in enumerate(taps))


def _unsharp(x: np.ndarray, sigma: float, amount: float) -> np.ndarray:
    return x + amount * (x - _gaussian(x, sigma))


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _luma(x: np.ndarray) -> np.ndarray:
    return x @ np.array([0.299, 0.587, 0.114], np.float32)


# ---------------------------------------------------------------------------------------------- writing


def synthesize(
    out: Path,
    images_per_class: int = 100,
    val_images_per_class: int | None = None,
    size: int = 128,
    seed: int = 0,
    formats: SynthFormats = "trap",
    generators: Sequence[str] = GENIMAGE_GENERATORS,
    workers: int | None = None,
    progress: bool = True,
) -> SynthSummary:
    """Write the generated dataset under ``out`` in Tiny GenImage layout and return what was written.

    ``images_per_class`` is the number of images per (generator, train, label); validation gets
    ``val_images_per_class``, by default a quarter of that (at least one). Files with the same names are
    overwritten; nothing else in ``out`` is touched. ``workers=1`` renders in this process; the default
    uses one process per CPU. The result depends only on the arguments other than ``workers`` and
    ``progress``.
    """
    out = Path(out)
    # A lone folder name is a sequence of characters; take it as the one generator it names.
    generators = (generators,) if isinstance(generators, str) else tuple(generators)
    val_count = max(1, images_per_class // 4) if val_images_per_class is None else val_images_per_class
    _validate(images_per_class, val_count, size, seed, formats, generators, workers)
    started = time.perf_counter()
    jobs = [
        _Job(str(out), generator, split, label, i, size, seed, formats)
        for generator in generators
        for split, count in zip(_SPLITS, (images_per_class, val_count), strict=True)
        for label in _LABELS
        for i in range(count)
    ]
    for generator in generators:
        for split in _SPLITS:
            for label in _LABELS:
                (out / generator / split / label).mkdir(parents=True, exist_ok=True)
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    counts: Counter[str] = Counter()
    with tqdm(total=len(jobs), desc="synth", unit="img", disable=not progress) as bar:
        if workers == 1:
            for generator in map(_render, jobs):
                counts[generator] += 1
                bar.update()
        else:
            chunksize = max(1, len(jobs) // (workers * 8))
            with process_pool(workers) as pool:
                for generator in pool.map(_render, jobs, chunksize=chunksize):
                    counts[generator] += 1
                    bar.update()
    (out / "SYNTH.md").write_text(
        _synth_md(images_per_class, val_count, size, seed, formats, generators), encoding="utf-8"
    )
    return SynthSummary(
        root=out,
        files=len(jobs),
        seconds=time.perf_counter() - started,
        counts={generator: counts[generator] for generator in generators},
    )


def _validate(
    images_per_class: int,
    val_count: int,
    size: int,
    seed: int,
    formats: str,
    generators: tuple[str, ...],
    workers: int | None,
) -> None:
    if images_per_class < 1:
        raise ValueError(f"images_per_class must be at least 1, got {images_per_class}")
    if val_count < 1:
        raise ValueError(f"val_images_per_class must be at least 1, got {val_count}")
    if size < _MIN_SIZE:
        raise ValueError(f"size must be at least {_MIN_SIZE} pixels, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if formats not in _FORMATS:
        raise ValueError(f"formats must be one of {', '.join(_FORMATS)}, got {formats!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1 (or None for one per CPU), got {workers}")
    if not generators:
        raise ValueError("generators must name at least one generator folder")
    for generator in generators:
        plain = isinstance(generator, str) and generator not in ("", ".", "..")
        if not plain or any(c in generator for c in "/\\"):
            raise ValueError(f"generator names must be plain folder names, got {generator!r}")
    if len(set(generators)) != len(generators):
        raise ValueError(f"generators must not repeat a name, got {list(generators)}")


def _render(job: _Job) -> str:
    """Make one image and write it; returns its generator. Runs in worker processes."""
    root, generator, split, label, index, size, seed, formats = job
    # The image's stream depends on its identity alone, never on which worker renders it or when.
    rng = np.random.default_rng(
        [
            seed,
            zlib.crc32(generator.encode("utf-8")),
            _SPLITS.index(split),
            _LABELS.index(label),
            index,
        ]
    )
    pixels = nature_crop(size, rng)
    if label == LABEL_AI:
        pixels = apply_family(generator, pixels, rng)
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    if label == LABEL_NATURE and formats == "trap":
        quality = int(rng.integers(_JPEG_QUALITY[0], _JPEG_QUALITY[1] + 1))
        image.save(buffer, format="JPEG", quality=quality, subsampling=2, optimize=False, progressive=False)
        extension = "jpg"
    else:
        image.save(buffer, format="PNG", compress_level=6, optimize=False)
        extension = "png"
    name = f"{generator}_{split}_{label}_{index:05d}.{extension}"
    (Path(root) / generator / split / label / name).write_bytes(buffer.getvalue())
    return generator


def _synth_md(
    images_per_class: int,
    val_count: int,
    size: int,
    seed: int,
    formats: str,
    generators: tuple[str, ...],
) -> str:
    format_line = {
        "trap": "`trap`: nature images are JPEG (quality 90-95, 4:2:0), AI images are PNG, copying the "
        "GenImage confound. A model can score well here by reading the container instead of the pixels.",
        "match": "`match`: every image is PNG, so the file format says nothing about the label.",
    }[formats]
    family_rows = "\n".join(
        f"| `{generator}` | `{family_of(generator)}` | {FAMILIES[family_of(generator)]} |"
        for generator in generators
    )
    photos = ", ".join(f"`{name}`" for name in photo_names())
    return f"""# Generated sample dataset (genart data synth)

**This dataset is for running the system (demos, CI, smoke tests of training, evaluation and serving).
It is NOT for measuring real-world accuracy.** No generative model made its "AI" images: they are crops
of real photographs passed through hand-written imitations of generator artefacts. A detector that does
well here has learned these imitations; it tells you nothing about GenImage or about images in the wild.

## Parameters

| parameter | value |
|---|---|
| images per class (train) | {images_per_class} |
| images per class (val) | {val_count} |
| size | {size} x {size} |
| seed | {seed} |
| formats | {formats} |
| generators | {len(generators)} |
| images | {len(generators) * 2 * (images_per_class + val_count)} |

Formats: {format_line}

## Layout

`<generator>/<train|val>/<ai|nature>/<generator>_<split>_<label>_<index>.<png|jpg>`, the Tiny GenImage
layout. Each image's randomness comes from (seed, generator, split, label, index) alone: the same
parameters give byte-identical files.

## Nature images

Crops of photographs bundled in installed packages (scikit-image, scikit-learn, matplotlib): {photos}.
Each crop has a random photograph, position, scale in [0.5, 1] (antialiased) and horizontal flip.

## AI images and their families

Crops drawn the same way, then passed through their folder's family.

| generator folder | family | process |
|---|---|---|
{family_rows}
"""
