"""Metrics for a binary AI-vs-real detector: overall and per generator, threshold choice and calibration.

Pure functions over arrays of targets (1 = ai) and probabilities P(ai); scikit-learn does the arithmetic.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from genart.models.predict import is_ai

__all__ = [
    "binary_metrics",
    "choose_threshold",
    "expected_calibration_error",
    "fit_temperature",
    "per_generator",
]


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and ROC-AUC (NaN when only one class is present)."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    pred = is_ai(p, threshold).astype(int)
    both = len(np.unique(y)) == 2
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "n": len(y),
        "accuracy": float(accuracy_score(y, pred)) if len(y) else float("nan"),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        # For one-label folders these are what matter: detection rate on fakes, false positives on photos.
        "detection_rate": float(tp / (tp + fn)) if tp + fn else float("nan"),
        "false_positive_rate": float(fp / (fp + tn)) if fp + tn else float("nan"),
    }


def per_generator(frame: pd.DataFrame, threshold: float, prob_col: str = "prob") -> pd.DataFrame:
    """:func:`binary_metrics` per generator, plus an ``all`` row. ``frame`` has generator, target, prob."""
    rows = {
        gen: binary_metrics(part["target"], part[prob_col], threshold)
        for gen, part in frame.groupby("generator", sort=True)
    }
    rows["all"] = binary_metrics(frame["target"], frame[prob_col], threshold)
    return pd.DataFrame.from_dict(rows, orient="index")


def choose_threshold(y: np.ndarray, p: np.ndarray, max_fpr: float | None = None) -> float:
    """The decision threshold chosen on validation data; 0.5 if undefined.

    By default the one that maximises Youden's J (TPR - FPR). With ``max_fpr``, the operating point for a
    detector whose false accusations cost more than its misses: the lowest threshold (the most AI caught)
    whose false-positive rate, real images called AI, is at most ``max_fpr``.
    """
    y = np.asarray(y).astype(int)
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    # fpr rises along the curve and starts at 0, so some point is within any max_fpr
    best = np.argmax(tpr - fpr) if max_fpr is None else np.flatnonzero(fpr <= max_fpr)[-1]
    return float(np.clip(thresholds[int(best)], 1e-6, 1.0))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 15) -> float:
    """ECE of P(ai): the bin-weighted gap between confidence and accuracy of the predicted class."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    if not len(y):
        return float("nan")
    confidence = np.maximum(p, 1 - p)
    correct = (is_ai(p, 0.5).astype(int) == y).astype(float)
    edges = np.linspace(0.5, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def fit_temperature(logits: np.ndarray, y: np.ndarray, max_iter: int = 200) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimising NLL of ``softmax(logits / T)``."""
    logits_t = torch.as_tensor(np.array(logits), dtype=torch.float64)
    y_t = torch.as_tensor(np.array(y), dtype=torch.long)  # a copy: pandas may hand a read-only view
    if len(torch.unique(y_t)) < 2:
        return 1.0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits_t / log_t.exp(), y_t)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(np.clip(log_t.exp().item(), 0.05, 20.0))
