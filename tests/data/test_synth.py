"""The generated sample dataset: layout, determinism, formats and the artefact families."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest

from genart.data.layout import GENIMAGE_GENERATORS, LABEL_AI, LABEL_NATURE, parse_path
from genart.data.synth import FAMILIES, apply_family, family_of, nature_crop, synthesize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
SMALL = {"images_per_class": 2, "val_images_per_class": 1, "size": 64, "progress": False}


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _images(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file() and path.name != "SYNTH.md")


@pytest.fixture(scope="module")
def trap_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trap")
    synthesize(root, seed=0, formats="trap", workers=1, **SMALL)
    return root


def _gray(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64).mean(axis=-1)


def _nyquist_peak(img: np.ndarray) -> float:
    """Spectral magnitude at the three Nyquist frequencies, relative to the median magnitude."""
    gray = _gray(img)
    spectrum = np.abs(np.fft.fft2(gray - gray.mean()))
    half = gray.shape[0] // 2
    return float((spectrum[half, half] + spectrum[0, half] + spectrum[half, 0]) / 3 / np.median(spectrum))


def _high_frequency_energy(img: np.ndarray) -> float:
    """Spectral energy above a quarter of the sampling frequency."""
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(_gray(img)))) ** 2
    n = img.shape[0]
    yy, xx = np.mgrid[:n, :n] - n // 2
    return float(spectrum[np.hypot(yy, xx) > n / 4].sum())


def _crop(seed: int, size: int = 64) -> np.ndarray:
    return nature_crop(size, np.random.default_rng([seed]))


def test_synthesize_writes_every_generator_split_and_label(trap_root: Path) -> None:
    expected = {"train": 2, "val": 1}
    folders = {path.name for path in trap_root.iterdir() if path.is_dir()}
    assert folders == set(GENIMAGE_GENERATORS)
    for generator in GENIMAGE_GENERATORS:
        for split, label in itertools.product(expected, (LABEL_AI, LABEL_NATURE)):
            files = sorted((trap_root / generator / split / label).iterdir())
            assert len(files) == expected[split]
            for i, path in enumerate(files):
                assert path.stem == f"{generator}_{split}_{label}_{i:05d}"
                parsed = parse_path(path.relative_to(trap_root))
                assert (parsed.generator, parsed.split, parsed.label) == (generator, split, label)


def test_synthesize_summary_counts_what_it_wrote(tmp_path: Path) -> None:
    summary = synthesize(tmp_path, seed=3, workers=1, **SMALL)
    assert summary.root == tmp_path
    assert summary.files == len(_images(tmp_path)) == 7 * 2 * (2 + 1)
    assert summary.counts == dict.fromkeys(GENIMAGE_GENERATORS, 6)
    assert summary.seconds > 0


def test_val_images_default_to_a_quarter_of_train(tmp_path: Path) -> None:
    synthesize(tmp_path, images_per_class=9, size=32, generators="imagenet_glide", workers=1, progress=False)
    assert [path.name for path in tmp_path.iterdir() if path.is_dir()] == ["imagenet_glide"]
    assert len(list((tmp_path / "imagenet_glide" / "train" / LABEL_AI).iterdir())) == 9
    assert len(list((tmp_path / "imagenet_glide" / "val" / LABEL_AI).iterdir())) == 2


def test_same_seed_gives_byte_identical_files_whatever_the_worker_count(
    trap_root: Path, tmp_path: Path
) -> None:
    synthesize(tmp_path, seed=0, formats="trap", workers=2, **SMALL)
    assert _hashes(tmp_path) == _hashes(trap_root)


def test_different_seed_gives_different_images(trap_root: Path, tmp_path: Path) -> None:
    synthesize(tmp_path, seed=1, formats="trap", workers=1, **SMALL)
    first, second = _hashes(trap_root), _hashes(tmp_path)
    assert first.keys() == second.keys()
    images = [name for name in first if not name.endswith("SYNTH.md")]
    assert all(first[name] != second[name] for name in images)


def test_trap_format_saves_nature_as_jpeg_and_ai_as_png(trap_root: Path) -> None:
    for path in _images(trap_root):
        head = path.read_bytes()[:8]
        if path.parent.name == LABEL_NATURE:
            assert path.suffix == ".jpg" and head.startswith(JPEG_MAGIC), path
        else:
            assert path.suffix == ".png" and head == PNG_MAGIC, path


def test_match_format_saves_everything_as_png(tmp_path: Path) -> None:
    synthesize(tmp_path, seed=0, formats="match", workers=1, **SMALL)
    for path in _images(tmp_path):
        assert path.suffix == ".png" and path.read_bytes()[:8] == PNG_MAGIC, path


def test_synth_md_says_it_is_not_for_measuring_real_world_accuracy(trap_root: Path) -> None:
    text = (trap_root / "SYNTH.md").read_text(encoding="utf-8")
    assert "NOT for measuring real-world accuracy" in text
    for generator in GENIMAGE_GENERATORS:
        assert generator in text


def test_rewriting_overwrites_same_names_and_keeps_other_files(tmp_path: Path) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("keep me", encoding="utf-8")
    synthesize(tmp_path, seed=0, workers=1, **SMALL)
    before = _hashes(tmp_path)
    synthesize(tmp_path, seed=0, workers=1, **SMALL)
    assert _hashes(tmp_path) == before
    assert other.read_text(encoding="utf-8") == "keep me"


@pytest.mark.parametrize("generator", GENIMAGE_GENERATORS)
def test_every_family_changes_the_image_and_keeps_shape_and_dtype(generator: str) -> None:
    crop = _crop(0)
    out = apply_family(generator, crop, np.random.default_rng(1))
    assert out.shape == crop.shape and out.dtype == np.uint8
    assert np.abs(out.astype(np.int16) - crop).mean() > 0.25


@pytest.mark.parametrize("generator", GENIMAGE_GENERATORS)
def test_families_accept_odd_non_square_images(generator: str) -> None:
    img = np.ascontiguousarray(_crop(2, size=72)[:53, :67])
    out = apply_family(generator, img, np.random.default_rng(1))
    assert out.shape == img.shape and out.dtype == np.uint8


def test_family_outputs_differ_from_each_other() -> None:
    crop = _crop(0)
    outputs = {g: apply_family(g, crop, np.random.default_rng(1)) for g in GENIMAGE_GENERATORS}
    for a, b in itertools.combinations(GENIMAGE_GENERATORS, 2):
        assert not np.array_equal(outputs[a], outputs[b]), (a, b)


def test_family_is_deterministic_given_the_rng() -> None:
    crop = _crop(4)
    for generator in GENIMAGE_GENERATORS:
        first = apply_family(generator, crop, np.random.default_rng(7))
        second = apply_family(generator, crop, np.random.default_rng(7))
        assert np.array_equal(first, second), generator


def test_biggan_family_leaves_a_checkerboard_peak_at_the_nyquist_frequency() -> None:
    for seed in range(8):
        crop = _crop(seed)
        out = apply_family("imagenet_ai_0419_biggan", crop, np.random.default_rng(1))
        assert _nyquist_peak(out) > 3 * _nyquist_peak(crop), seed


def test_latent_family_removes_high_frequency_energy() -> None:
    crops = [_crop(seed) for seed in range(8)]
    outputs = [apply_family("imagenet_ai_0424_sdv5", crop, np.random.default_rng(1)) for crop in crops]
    before = sum(_high_frequency_energy(crop) for crop in crops)
    after = sum(_high_frequency_energy(out) for out in outputs)
    assert after < 0.6 * before


def test_nature_crops_are_sharp_photographs_not_flat_fields() -> None:
    crops = [_crop(seed) for seed in range(8)]
    assert all(crop.shape == (64, 64, 3) and crop.dtype == np.uint8 for crop in crops)
    assert np.mean([crop.std() for crop in crops]) > 10


def test_unknown_generators_map_onto_a_known_family_stably(tmp_path: Path) -> None:
    assert family_of("imagenet_ai_0424_wukong") == "imagenet_ai_0424_wukon"
    assert family_of("Imagenet_Glide") == "imagenet_glide"
    assert family_of("my_new_generator") in FAMILIES
    assert family_of("my_new_generator") == family_of("my_new_generator")
    summary = synthesize(
        tmp_path, images_per_class=1, size=32, generators=["my_new_generator"], workers=1, progress=False
    )
    assert summary.counts == {"my_new_generator": 4}
    assert (tmp_path / "my_new_generator" / "val" / LABEL_AI).is_dir()


def test_families_document_every_genimage_generator() -> None:
    assert set(FAMILIES) == set(GENIMAGE_GENERATORS)
    assert all(description.strip() for description in FAMILIES.values())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"images_per_class": 0}, "images_per_class"),
        ({"val_images_per_class": 0}, "val_images_per_class"),
        ({"size": 16}, "size"),
        ({"seed": -1}, "seed"),
        ({"formats": "jpeg"}, "formats"),
        ({"workers": 0}, "workers"),
        ({"generators": []}, "generators"),
        ({"generators": ["../escape"]}, "generator"),
        ({"generators": ["a", "a"]}, "generators"),
    ],
)
def test_bad_arguments_raise_value_error(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        synthesize(tmp_path, progress=False, **kwargs)
    assert not any(tmp_path.iterdir())


def test_apply_family_rejects_non_rgb_uint8() -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        apply_family("imagenet_glide", np.zeros((32, 32), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        apply_family("imagenet_glide", np.zeros((32, 32, 3), np.float32), np.random.default_rng(0))
