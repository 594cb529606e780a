"""THE inference rules: class probabilities from logits (temperature included), P(ai), the label rule, and
batch prediction over manifest rows.

Serving, training, evaluation and export import these; none of them writes its own softmax or threshold
comparison. Torch and the data pipeline are imported where they are used, so the serving ingress can take
the label rule without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, overload

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from genart.data.transforms import InputSpec

__all__ = [
    "Predictor",
    "ai_probability",
    "class_probabilities",
    "is_ai",
    "label_for",
    "predict_rows",
]


def class_probabilities(logits: np.ndarray | torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` over classes, for logits shaped (N, classes): the one softmax."""
    import torch

    logits_t = torch.as_tensor(np.array(logits, dtype=np.float32))
    return torch.softmax(logits_t / temperature, dim=1).numpy()


def ai_probability(logits: np.ndarray | torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """P(ai) = 1 - P(nature) from logits (N, classes): class 0 is nature in detectors and attributors."""
    return 1.0 - class_probabilities(logits, temperature)[:, 0]


@overload
def is_ai(p: float, threshold: float) -> bool: ...
@overload
def is_ai(p: np.ndarray | pd.Series, threshold: float | np.ndarray) -> np.ndarray: ...
def is_ai(p: Any, threshold: float | np.ndarray) -> Any:
    """THE label rule: an image is AI-generated when P(ai) reaches the threshold (``p >= threshold``)."""
    if np.ndim(p) == 0:
        return bool(float(p) >= threshold)
    return np.asarray(p, dtype=np.float64) >= threshold


@overload
def label_for(p: float, threshold: float) -> str: ...
@overload
def label_for(p: np.ndarray | pd.Series, threshold: float) -> np.ndarray: ...
def label_for(p: Any, threshold: float) -> Any:
    """``"ai"`` or ``"nature"`` by :func:`is_ai`; an array of labels for an array of probabilities."""
    if np.ndim(p) == 0:
        return "ai" if is_ai(float(p), threshold) else "nature"
    return np.where(is_ai(p, threshold), "ai", "nature")


class Predictor(Protocol):
    """What :func:`predict_rows` needs from a model: its metadata, its input spec and its logits."""

    meta: Any
    spec: InputSpec

    def logits(self, images: torch.Tensor) -> torch.Tensor: ...


def predict_rows(
    loaded: Predictor,
    rows: pd.DataFrame,
    degrade: str | None = None,
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """``rows`` (see :func:`genart.data.pipeline.select_rows`) with one ``logit_<i>`` per class, and ``prob``.

    ``prob`` is the calibrated P(ai) = 1 - P(nature), with the artefact's temperature applied. ``target``
    becomes 0/1 (nature/ai), the class index is kept as ``class_target``, and ``pred_class`` names the
    argmax class. An ensemble (:class:`genart.models.ensemble.LoadedEnsemble`) combines its members'.
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from genart.data.pipeline import ManifestDataset
    from genart.models.allocator import reuse_freed_memory

    if hasattr(loaded, "predict_rows"):  # an ensemble
        return loaded.predict_rows(
            rows, degrade=degrade, batch_size=batch_size, workers=workers, progress=progress
        )
    classes = loaded.meta.classes
    cached = getattr(getattr(loaded, "model", None), "logits_for_rows", None)
    if cached is not None:  # a frozen encoder: features from its cache, the same head and rules after
        stacked = np.asarray(cached(rows, degrade), np.float32).reshape(len(rows), len(classes))
    else:
        reuse_freed_memory()
        dataset = ManifestDataset(rows, loaded.spec, degrade=degrade)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
        logits = []
        desc = f"predict{' ' + degrade if degrade else ''}"
        for images, _ in tqdm(loader, desc=desc, disable=not progress):
            logits.append(loaded.logits(images))
        stacked = torch.cat(logits).numpy() if logits else np.zeros((0, len(classes)), np.float32)
    out = rows.reset_index(drop=True).copy()
    for i in range(stacked.shape[1]):
        out[f"logit_{i}"] = stacked[:, i]
    out["prob"] = ai_probability(stacked, loaded.meta.temperature)
    out["class_target"] = out["target"]
    out["target"] = (out["target"] != 0).astype("int64")
    out["pred_class"] = [classes[i] for i in stacked.argmax(1)] if len(stacked) else []
    return out
