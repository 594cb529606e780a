"""Training a frozen-encoder detector end to end: cached CLIP features, head, calibration, artefact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genart.config import GenartConfig
from genart.data.index import index_tree, read_manifest, write_manifest
from genart.data.split import assign_splits
from tests.conftest import build_tree

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture
def small_manifest(tmp_path):
    root = build_tree(tmp_path / "tree", per_folder=4)
    index_tree(root, tmp_path / "m.parquet", workers=1, progress=False)
    return write_manifest(
        assign_splits(read_manifest(tmp_path / "m.parquet")).manifest, tmp_path / "m.split.parquet"
    )


def test_fit_frozen_writes_a_self_describing_artefact(ray_cluster, small_manifest, tmp_path, monkeypatch):
    from genart.models.clip import CLIP_SHA256
    from genart.train.head import fit_frozen

    monkeypatch.setenv("GENART_CACHE_DIR", str(tmp_path / "cache"))
    config = GenartConfig.model_validate(
        {"model": {"name": "clip_b16", "taps": [6, 7], "train_views": 1, "head_c": 0.1}}
    )
    result = fit_frozen(config, small_manifest, out=tmp_path / "artifacts", artifact_name="clip")
    meta = json.loads((result.artifact / "genart.json").read_text())
    assert meta["kind"] == "clip" and meta["encoder"] == {
        "file": "clip_encoder.int8.onnx", "sha256": CLIP_SHA256, "taps": [6, 7], "int8": "exact"}  # fmt: skip
    assert meta["trained_on"]["generated"] is False and meta["trained_on"]["images"] > 0
    assert 0.0 <= meta["threshold"] <= 1.0 and meta["temperature"] > 0
    assert {"test_roc_auc", "ece_after"} <= set(result.metrics)
    assert (result.artifact / "evaluation").is_dir()
    # the features were cached: a second fit encodes nothing new
    parts = sorted((tmp_path / "cache").rglob("part-*.parquet"))
    fit_frozen(config, small_manifest, out=tmp_path / "artifacts", artifact_name="clip2", evaluate_test=False)
    assert sorted((tmp_path / "cache").rglob("part-*.parquet")) == parts


@pytest.mark.parametrize("canonical_jpeg", [None, 90])
def test_a_clip_artefact_loads_by_path_and_cached_scores_match_the_network(
    ray_cluster, small_manifest, tmp_path, monkeypatch, canonical_jpeg
):
    import numpy as np
    import torch

    from genart.data.pipeline import select_rows
    from genart.data.transforms import decode_image
    from genart.models.artifact import load_artifact
    from genart.models.clip import ClipDetector
    from genart.models.predict import predict_rows
    from genart.train.head import fit_frozen

    monkeypatch.setenv("GENART_CACHE_DIR", str(tmp_path / "cache"))
    config = GenartConfig.model_validate(
        {"model": {"name": "clip_b16", "taps": [8], "train_views": 0, "canonical_jpeg": canonical_jpeg,
                   "sized_views": 0 if canonical_jpeg is None else 1}}
    )  # fmt: skip
    result = fit_frozen(config, small_manifest, out=tmp_path / "a", artifact_name="c", evaluate_test=False)
    loaded = load_artifact(result.artifact)
    assert isinstance(loaded.model, ClipDetector) and loaded.model.encoder.taps == (8,)
    # the eval-time JPEG is part of the artefact's input policy: serving and the feature cache both apply it
    assert loaded.spec.jpeg_quality == canonical_jpeg == loaded.model.spec.jpeg_quality
    # fitted on the eval view; with an eval-time JPEG on the same view without it, and the recipe's
    # class-matched eval view, too
    views = 1 if canonical_jpeg is None else 3
    assert loaded.meta.metrics["train_feature_rows"] == views * len(select_rows(small_manifest, "train"))
    rows = select_rows(small_manifest, "test")
    cached = predict_rows(loaded, rows)["prob"].to_numpy()  # through the feature cache
    images = torch.stack([loaded.transform(decode_image(Path(p).read_bytes())) for p in rows["path"]])
    direct = loaded.predict_proba(images)  # through the network, as a Serve model deployment runs it
    np.testing.assert_allclose(cached, direct, atol=1e-5)
