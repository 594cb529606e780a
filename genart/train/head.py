"""Training a frozen-encoder detector (zoo kind ``clip``): cached features, then a linear head.

The encoder never changes, so each training image is encoded once per view (:mod:`genart.models.features`,
Ray Data, cached by sha256) and the head is a logistic regression fitted by scikit-learn in seconds. The
fitted head becomes a :class:`~genart.models.clip.ClipHead` (standardisation + one linear layer), and from
there on the detector is an ordinary artefact: calibrated on validation, evaluated on test and written by
the same functions as a fine-tuned network.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from genart.config import GenartConfig
from genart.data.pipeline import cap_per_generator, select_rows

__all__ = [
    "fit_frozen",
    "fit_head",
    "frozen_detector",
    "head_views",
    "training_matrix",
]

log = logging.getLogger(__name__)


def fit_head(features: np.ndarray, targets: np.ndarray, num_classes: int, c: float, seed: int = 0):
    """A :class:`~genart.models.clip.ClipHead` fitted by an L2 logistic regression on standardised features.

    Classes are weighted to balance. For two classes the logit of ``nature`` is fixed at 0, so the softmax
    gives P(ai) = sigmoid(w·z + b), exactly the regression's probability.
    """
    from genart.models.clip import ClipHead

    scaler = StandardScaler().fit(features)
    z = scaler.transform(features)
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed).fit(z, targets)
    head = ClipHead(features.shape[1], num_classes)
    weight = np.zeros((num_classes, features.shape[1]), np.float32)
    bias = np.zeros(num_classes, np.float32)
    if num_classes == 2:
        weight[1], bias[1] = model.coef_[0], model.intercept_[0]
    else:
        weight[model.classes_], bias[model.classes_] = model.coef_, model.intercept_
    with torch.no_grad():
        head.mean.copy_(torch.from_numpy(scaler.mean_.astype(np.float32)))
        head.scale.copy_(torch.from_numpy(np.where(scaler.scale_ > 0, scaler.scale_, 1.0).astype(np.float32)))
        head.linear.weight.copy_(torch.from_numpy(weight))
        head.linear.bias.copy_(torch.from_numpy(bias))
    return head


def split_rows(config: GenartConfig, manifest: str | Path, classes: list[str] | None = None) -> dict:
    """Train (capped by ``data.max_per_generator``) and val rows, with their sha256."""
    data = config.data
    rows = {
        split: select_rows(manifest, split, data.generators, data.exclude_generators, classes)
        for split in ("train", "val")
    }
    rows["train"] = cap_per_generator(rows["train"], data.max_per_generator, data.seed)
    return rows


def frozen_detector(config: GenartConfig, num_classes: int):
    """An untrained detector (encoder found, head empty) for ``config.model``."""
    from genart.models.clip import DEFAULT_TAPS, ClipDetector, ClipEncoder, ClipHead
    from genart.models.zoo import input_spec

    encoder = ClipEncoder(config.model.weights, taps=config.model.taps or DEFAULT_TAPS)
    return ClipDetector(encoder, ClipHead(encoder.dim, num_classes), input_spec(config.model))


def head_views(detector, config: GenartConfig) -> list[Callable[[pd.DataFrame], np.ndarray]]:
    """What a frozen-encoder head is fitted on, each a ``rows -> features`` function, the served view first:
    the eval view; with an eval-time JPEG (``model.canonical_jpeg``) the same view without it too, so the
    head learns to give both the same answer; ``train_views`` class-matched augmented views; and
    ``sized_views`` class-matched eval views (:func:`~genart.data.transforms.matched_eval_transform`)."""
    cache = detector.feature_cache(config.augment)
    views = [functools.partial(cache.matrix, view="eval")]
    if detector.spec.jpeg_quality is not None:
        plain = detector.feature_cache(config.augment, spec=replace(detector.spec, jpeg_quality=None))
        views.append(functools.partial(plain.matrix, view="eval"))
    views += [functools.partial(cache.matrix, view=f"train{k}") for k in range(config.model.train_views)]
    views += [functools.partial(cache.matrix, view=f"sized{k}") for k in range(config.model.sized_views)]
    return views


def training_matrix(detector, rows: pd.DataFrame, config: GenartConfig) -> tuple[np.ndarray, np.ndarray]:
    """Features of every :func:`head_views` view of ``rows``, with repeated targets."""
    views = head_views(detector, config)
    features = np.concatenate([view(rows) for view in views])
    return features, np.tile(rows["target"].to_numpy(), len(views))


def fit_frozen(
    config: GenartConfig,
    manifest: str | Path,
    out: str | Path = "artifacts",
    artifact_name: str | None = None,
    evaluate_test: bool = True,
):
    """Encode (cached), fit the head, then calibrate, evaluate and save like a trained network."""
    from genart.data.index import training_data_summary
    from genart.models.artifact import ArtifactMeta, LoadedModel, split_fingerprint
    from genart.train.trainer import finish_artifact, init_ray, model_classes

    manifest = Path(manifest)
    if not manifest.exists():
        raise FileNotFoundError(f"no manifest at {manifest}: run `genart data index` and `genart data split`")
    init_ray()
    classes = model_classes(config, manifest)
    data = config.data
    rows = split_rows(config, manifest, classes)
    detector = frozen_detector(config, len(classes))
    started = time.monotonic()
    features, targets = training_matrix(detector, rows["train"], config)
    encoded = time.monotonic() - started
    detector.head = fit_head(features, targets, len(classes), config.model.head_c, data.seed)
    log.info("head fitted on %d feature rows (%.0f s encoding, %.1f s fit)", len(features), encoded,
             time.monotonic() - started - encoded)  # fmt: skip
    run_name = config.train.run_name or f"{config.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    meta = ArtifactMeta(
        name=config.model.name,
        kind="clip",
        timm_id="",
        encoder=detector.encoder.describe(),
        input=detector.spec.to_dict(),
        data_fingerprint=split_fingerprint(rows),
        generators=sorted(rows["train"]["generator"].unique()),
        trained_on=training_data_summary(manifest, rows["train"]),
        classes=classes,
        train_config=config.model_dump(mode="json"),
        metrics={"train_feature_rows": len(features), "encode_seconds": round(encoded, 1)},
    )  # fmt: skip
    from genart.data.transforms import eval_transform

    loaded = LoadedModel(detector.eval(), meta, detector.spec, eval_transform(detector.spec), source=run_name)
    workers = min(4, os.cpu_count() or 1)
    return finish_artifact(
        loaded, config, manifest, Path(out) / (artifact_name or run_name), run_name, None, pd.DataFrame(),
        evaluate_test=evaluate_test, workers=workers,
    )  # fmt: skip


def head_trainable(config: GenartConfig, manifest: str | Path):
    """A Ray Tune trainable and grid over ``tune.head_c``: features encoded once (cached), put in the object
    store, and one head fitted per trial, reporting its validation ROC-AUC."""
    from ray import tune
    from sklearn.metrics import roc_auc_score

    from genart.models.predict import ai_probability

    data = config.data
    rows = split_rows(config, manifest)
    detector = frozen_detector(config, 2)
    x, y = training_matrix(detector, rows["train"], config)
    val_x = detector.feature_cache(config.augment).matrix(rows["val"], "eval")
    val_y = rows["val"]["target"].to_numpy()

    def trial(params: dict, x, y, val_x, val_y) -> None:
        head = fit_head(x, y, 2, float(params["head_c"]), data.seed)
        with torch.inference_mode():
            p = ai_probability(head(torch.from_numpy(val_x)))
        tune.report({"val_auc": float(roc_auc_score(val_y, p)), "epoch": 1})

    trainable = tune.with_resources(
        tune.with_parameters(trial, x=x, y=y, val_x=val_x, val_y=val_y), {"cpu": 1}
    )
    return trainable, {"head_c": tune.grid_search(list(config.tune.head_c))}
