"""Shortcut baselines: what metadata alone, or subject matter alone, predicts, through the same evaluation.

A detector is only worth something if it beats what needs no generation artefacts at all:

- ``metadata``: file format, width, height, bytes, bytes per pixel and the JPEG quality estimate, from the
  manifest (:mod:`genart.data.index` measured them), into a random forest;
- ``content``: the frozen EfficientNet-Lite0 ImageNet features of the whole image (resized, as ImageNet
  classifiers see it) into a logistic regression. ImageNet features encode what is in the picture, so this
  mostly learns subject matter: art against everyday scenes, say.

Each is fitted on the train split, its threshold chosen on validation (Youden's J, like a model's), and
written with :func:`genart.evaluate.evaluation.write_evaluation`, so its reports read like a model's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from genart.data.index import read_manifest, usable
from genart.evaluate.evaluation import EvaluationResult, manifest_label, write_evaluation
from genart.evaluate.metrics import binary_metrics, choose_threshold, per_generator

__all__ = ["BASELINES", "Baseline", "content_features", "fit_baseline", "metadata_matrix", "run_baseline"]

Baseline = Literal["metadata", "content"]
BASELINES: tuple[str, ...] = ("metadata", "content")
FORMATS = ("JPEG", "PNG", "WEBP")


def _rows(manifest: str | Path | pd.DataFrame, split: str | None) -> pd.DataFrame:
    """Usable binary rows of one split (None: all) with their metadata; ``target`` 1 for ai."""
    frame = read_manifest(manifest) if isinstance(manifest, str | Path) else manifest
    rows = usable(frame)
    if split is not None:
        if split not in set(rows["split"].dropna()):
            raise ValueError(f"no usable rows in split {split!r}: run `genart data split` first")
        rows = rows[rows["split"] == split]
    rows = rows[rows["label"].isin(["ai", "nature"])].reset_index(drop=True)
    return rows.assign(target=(rows["label"] == "ai").astype("int64"))


def metadata_matrix(rows: pd.DataFrame) -> np.ndarray:
    """Fixed columns, whatever formats a frame holds: log width, log height, log bytes, bytes per pixel,
    JPEG quality (-1 when not a JPEG), and one-hot JPEG/PNG/WEBP/other."""
    width = rows["width"].astype(float).clip(lower=1)
    height = rows["height"].astype(float).clip(lower=1)
    size = rows["bytes"].astype(float).clip(lower=1)
    fmt = rows["format"].fillna("")
    columns = [
        np.log(width),
        np.log(height),
        np.log(size),
        size / (width * height),
        rows["jpeg_quality"].astype(float).fillna(-1.0),
        *[(fmt == f).astype(float) for f in FORMATS],
        (~fmt.isin(FORMATS)).astype(float),
    ]
    return np.column_stack([np.asarray(c, dtype=np.float64) for c in columns])


@functools.cache
def _feature_model():
    """Lite0 with its ImageNet weights and no head, built once per process (train, val and every scored set
    use it)."""
    from genart.models.zoo import build_model

    model, spec = build_model("lite0", pretrained=True, num_classes=0, crop_policy="resize", input_size=224)
    return model.eval(), spec


def content_features(rows: pd.DataFrame, batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """Pooled, frozen EfficientNet-Lite0 ImageNet features of each whole image (resized to 224)."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from genart.data.pipeline import ManifestDataset

    model, spec = _feature_model()
    dataset = ManifestDataset(rows, spec)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    features = []
    with torch.inference_mode():
        for images, _ in tqdm(loader, desc="lite0 features", disable=not progress):
            features.append(model(images).numpy())
    return np.concatenate(features) if features else np.zeros((0, model.num_features), np.float32)


def _model(kind: Baseline):
    if kind == "metadata":
        return RandomForestClassifier(n_estimators=300, min_samples_leaf=2, random_state=0, n_jobs=-1)
    if kind == "content":
        return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
    raise ValueError(f"unknown baseline {kind!r}: use one of {', '.join(BASELINES)}")


def fit_baseline(
    kind: Baseline, train: pd.DataFrame, val: pd.DataFrame, features: Callable[[pd.DataFrame], np.ndarray]
):
    """The fitted classifier and its validation threshold."""
    model = _model(kind).fit(features(train), train["target"].to_numpy())
    threshold = choose_threshold(val["target"].to_numpy(), model.predict_proba(features(val))[:, 1])
    return model, threshold


def run_baseline(
    kind: Baseline,
    data: str | Path,
    evaluate_on: dict[str, str | Path] | None = None,
    out: str | Path = "reports/baselines",
    progress: bool = False,
) -> dict[str, EvaluationResult]:
    """Fit ``kind`` on ``data``'s train split (threshold on val), then evaluate it on ``data``'s test split
    and on every manifest in ``evaluate_on`` ({label: manifest}, all rows). Reports go to
    ``out/baseline-<kind>-<label>``; returns the results by label (``test`` for the in-source split)."""
    if kind == "metadata":
        features: Callable[[pd.DataFrame], np.ndarray] = metadata_matrix
    else:

        def features(rows: pd.DataFrame) -> np.ndarray:
            return content_features(rows, progress=progress)

    model, threshold = fit_baseline(kind, _rows(data, "train"), _rows(data, "val"), features)
    sets = {"test": _rows(data, "test")}
    for label, manifest in (evaluate_on or {}).items():
        sets[label] = _rows(manifest, None)
    results = {}
    for label, rows in sets.items():
        preds = rows[["path", "label", "generator", "target"]].copy()
        preds["prob"] = model.predict_proba(features(rows))[:, 1]
        table = per_generator(preds, threshold)
        result = EvaluationResult(
            name=f"baseline-{kind}",
            split=label,
            threshold=threshold,
            overall=binary_metrics(preds["target"], preds["prob"], threshold),
            per_generator=table,
            robustness=pd.DataFrame(index=table.index),
            predictions=preds,
            data=label if label != "test" else manifest_label(data),
        )
        write_evaluation(result, Path(out) / f"baseline-{kind}-{label}")
        results[label] = result
    return results
