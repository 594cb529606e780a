"""Building an ensemble artefact and measuring it: weights and threshold fitted on validation, then each
member against the ensemble on the test split. The rule and the artefact live in
:mod:`genart.models.ensemble`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from genart.config import EnsembleRule
from genart.data.pipeline import select_rows
from genart.evaluate.metrics import (
    binary_metrics,
    choose_threshold,
    expected_calibration_error,
    per_generator,
)
from genart.models.artifact import LoadedModel, load_artifact
from genart.models.ensemble import EnsembleSpec, combine, fit_weights, member_names
from genart.models.predict import predict_rows

__all__ = ["FittedEnsemble", "build_and_evaluate", "fit_ensemble"]


@dataclass
class FittedEnsemble:
    """What an ensemble learns from validation rows: weights (``weighted``), members' thresholds, its own
    threshold (on the combined P(ai), see :func:`choose_threshold`) and its calibration error there."""

    weights: list[float] | None
    member_thresholds: list[float]
    threshold: float
    ece: float


def fit_ensemble(
    loaded: list[LoadedModel],
    fit_rows: pd.DataFrame,
    rule: EnsembleRule = "mean",
    weights: list[float] | None = None,
    max_fpr: float | None = None,
) -> FittedEnsemble:
    """Fit the rule's weights (``weighted`` without fixed weights) and the threshold on ``fit_rows``."""
    fit_preds = [predict_rows(m, fit_rows) for m in loaded]
    y_fit = fit_preds[0]["target"].to_numpy()
    fit_probs = np.stack([p["prob"].to_numpy() for p in fit_preds])
    member_thresholds = [m.meta.threshold for m in loaded]
    if rule == "weighted" and weights is None:
        weights = fit_weights(fit_probs, y_fit)
    combined = combine(fit_probs, rule, weights, member_thresholds)
    return FittedEnsemble(
        weights=weights,
        member_thresholds=member_thresholds,
        threshold=choose_threshold(y_fit, combined, max_fpr),
        ece=expected_calibration_error(y_fit, combined),
    )


def build_and_evaluate(
    members: list[str],
    manifest: str | Path,
    rule: EnsembleRule = "mean",
    weights: list[float] | None = None,
    fit_on: str = "val",
    split: str = "test",
    max_fpr: float | None = None,
) -> tuple[EnsembleSpec, pd.DataFrame, pd.DataFrame]:
    """Fit the ensemble's weights (``weighted`` without weights) and threshold on ``fit_on``, then compare it
    with each member on ``split``, per generator. Returns ``(spec, accuracy table, overall table)``."""
    loaded = [load_artifact(m) for m in members]
    names = member_names([m.meta.name for m in loaded])
    fit_rows, test_rows = select_rows(manifest, fit_on), select_rows(manifest, split)
    fitted = fit_ensemble(loaded, fit_rows, rule, weights, max_fpr)
    weights, member_thresholds, threshold = fitted.weights, fitted.member_thresholds, fitted.threshold

    test_preds = [predict_rows(m, test_rows) for m in loaded]
    frame = test_preds[0][["generator", "target"]].copy()
    accuracy, overall = {}, {}
    for name, preds, model in zip(names, test_preds, loaded, strict=True):
        frame["prob"] = preds["prob"].to_numpy()
        accuracy[name] = per_generator(frame, model.meta.threshold)["accuracy"]
        overall[name] = binary_metrics(frame["target"], frame["prob"], model.meta.threshold)
    frame["prob"] = combine(
        np.stack([p["prob"].to_numpy() for p in test_preds]), rule, weights, member_thresholds
    )
    accuracy["ensemble"] = per_generator(frame, threshold)["accuracy"]
    overall["ensemble"] = binary_metrics(frame["target"], frame["prob"], threshold)
    spec = EnsembleSpec(
        members=[str(m) for m in members],
        rule=rule,
        weights=weights,
        member_thresholds=member_thresholds,
        threshold=threshold,
        threshold_max_fpr=max_fpr,
        metrics={
            **{f"test_{k}": float(v) for k, v in overall["ensemble"].items()},
            f"{fit_on}_ece": fitted.ece,
        },
    )
    return spec, pd.DataFrame(accuracy), pd.DataFrame(overall).T
