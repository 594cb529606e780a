"""The feature cache: keys, views, reuse, alignment with rows (a tiny deterministic encoder stands in)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genart.config import AugmentConfig
from genart.data.transforms import InputSpec
from genart.models.features import FeatureCache, view_transform

SPEC = InputSpec(input_size=32, crop_pct=1.0)


class MeanEncoder:
    """Per-channel means and standard deviations: cheap, deterministic, sensitive to any pixel change."""

    dim = 6
    calls = 0

    def features(self, pixels):
        MeanEncoder.calls += len(pixels)
        array = np.asarray(pixels, np.float32)
        return np.concatenate([array.mean(axis=(2, 3)), array.std(axis=(2, 3))], axis=1)


def _rows(tmp_path: Path, write_image, n=5) -> pd.DataFrame:
    paths = [write_image(tmp_path / f"{i}.png", size=(64, 48), seed=i) for i in range(n)]
    return pd.DataFrame({"path": [str(p) for p in paths],
                         "sha256": [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]})  # fmt: skip


def _cache(tmp_path, augment=None):
    return FeatureCache(MeanEncoder, {"name": "mean"}, SPEC, augment, root=tmp_path / "cache")


def test_cached_features_align_with_rows_and_are_reused(tmp_path, write_image):
    rows = _rows(tmp_path, write_image)
    cache = _cache(tmp_path)
    first = cache.matrix(rows, "eval")
    calls = MeanEncoder.calls
    again = cache.matrix(rows.iloc[::-1].reset_index(drop=True), "eval")
    assert MeanEncoder.calls == calls  # nothing encoded twice
    np.testing.assert_array_equal(again, first[::-1])


def test_views_differ_and_training_views_are_reproducible(tmp_path, write_image):
    rows = _rows(tmp_path, write_image, n=3)
    cache = _cache(tmp_path, AugmentConfig(jpeg_p=1.0, short_side=(40, 80)))
    eval_view = cache.matrix(rows, "eval")
    train = cache.matrix(rows, "train0")
    assert not np.allclose(eval_view, train)
    assert cache.key("train0") != cache.key("train1") != cache.key("eval")
    assert cache.key("train0") != _cache(tmp_path, AugmentConfig(jpeg_p=0.5)).key("train0")
    assert cache.key("eval") == _cache(tmp_path, AugmentConfig(jpeg_p=0.5)).key("eval")
    transform = view_transform("train0", SPEC, AugmentConfig(jpeg_p=1.0, short_side=(40, 80)))
    from PIL import Image

    image = Image.open(rows["path"][0]).convert("RGB")
    sha = rows["sha256"][0]
    np.testing.assert_array_equal(transform(image, sha).numpy(), transform(image, sha).numpy())


def test_an_eval_time_jpeg_keys_the_views_it_changes_and_only_those(tmp_path, write_image):
    import dataclasses

    plain, canonical = (
        _cache(tmp_path),
        FeatureCache(
            MeanEncoder,
            {"name": "mean"},
            dataclasses.replace(SPEC, jpeg_quality=90),
            None,
            root=tmp_path / "cache",
        ),
    )
    assert canonical.key("eval") != plain.key("eval") and canonical.key("jpeg75") != plain.key("jpeg75")
    assert canonical.key("train0") == plain.key("train0")  # training views never get the eval-time re-save
    rows = _rows(tmp_path, write_image, n=2)
    assert not np.allclose(canonical.matrix(rows, "eval"), plain.matrix(rows, "eval"))


def test_a_sized_view_is_keyed_by_the_eval_time_jpeg_and_the_augmentations(tmp_path, write_image):
    import dataclasses

    from PIL import Image

    augment = AugmentConfig(jpeg_p=1.0, short_side=(40, 80))
    spec = dataclasses.replace(SPEC, jpeg_quality=90)
    cache = FeatureCache(MeanEncoder, {"name": "mean"}, spec, augment, root=tmp_path / "cache")
    keys = [cache.key(v) for v in ("eval", "train0", "sized0", "sized1")]
    assert len(set(keys)) == 4
    # unlike a training view, the eval-time re-save is part of it, and so are the augmentations
    assert cache.key("sized0") != _cache(tmp_path, augment).key("sized0")
    other = FeatureCache(MeanEncoder, {"name": "mean"}, spec, AugmentConfig(jpeg_p=0.5), root=tmp_path / "c")
    assert cache.key("sized0") != other.key("sized0")
    rows = _rows(tmp_path, write_image, n=2)
    sized, train = cache.matrix(rows, "sized0"), cache.matrix(rows, "train0")
    assert not np.allclose(sized, train) and not np.allclose(sized, cache.matrix(rows, "eval"))
    view = view_transform("sized0", spec, augment)
    image = Image.open(rows["path"][0]).convert("RGB")
    np.testing.assert_array_equal(
        view(image, rows["sha256"][0]).numpy(), view(image, rows["sha256"][0]).numpy()
    )


def test_unknown_view_and_missing_features(tmp_path, write_image):
    rows = _rows(tmp_path, write_image, n=2)
    with pytest.raises(ValueError, match="unknown view"):
        view_transform("blurry", SPEC)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    bad = pd.concat([rows, pd.DataFrame({"path": [str(broken)], "sha256": ["f" * 64]})], ignore_index=True)
    with pytest.raises(KeyError, match="no 'eval' features"):
        _cache(tmp_path).matrix(bad, "eval")


def test_the_eval_view_sees_a_large_jpeg_as_serving_prepares_it(tmp_path):
    """Serving decodes a large JPEG at DCT scale and box-reduces it (``decode_with_header``); the cached eval
    view must start from that same image, or an eval-time re-save happens at another size than in serving."""
    import dataclasses
    import io

    import torch
    from PIL import Image

    from genart.data.transforms import decode_image, eval_transform, normalize
    from genart.models.features import Featurize
    from genart.serve.deployments import prepare_image

    spec = dataclasses.replace(SPEC, jpeg_quality=90)
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((1000, 750))
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=95)
    path = tmp_path / "large.jpg"
    path.write_bytes(buffer.getvalue())
    batch = {"path": np.array([str(path)]), "sha256": np.array(["a" * 64])}

    cached = Featurize(MeanEncoder, spec, "eval", None)(batch)["features"]
    prepared = prepare_image(path.read_bytes(), {"k": spec.to_dict()})
    served = MeanEncoder().features(normalize(torch.from_numpy(prepared.tensors["k"][None]), spec))
    np.testing.assert_array_equal(cached, served)  # serving hands uint8; normalised, bit for bit the same
    full_decode = MeanEncoder().features(eval_transform(spec)(decode_image(path.read_bytes()))[None])
    assert not np.allclose(full_decode, served)  # what the cache held before: a different re-save
