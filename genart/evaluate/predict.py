"""Batch prediction over manifest rows with a loaded artefact, optionally under a degradation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from genart.data.pipeline import ManifestDataset
from genart.evaluate.metrics import ai_probability
from genart.models.artifact import LoadedModel

__all__ = ["predict_rows"]


def predict_rows(
    loaded: LoadedModel,
    rows: pd.DataFrame,
    degrade: str | None = None,
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """``rows`` (see :func:`genart.data.pipeline.select_rows`) with one ``logit_<i>`` per class, and ``prob``.

    ``prob`` is the calibrated P(ai) = 1 - P(nature), with the artefact's temperature applied. ``target``
    becomes 0/1 (nature/ai), the class index is kept as ``class_target``, and ``pred_class`` names the
    argmax class. An ensemble (:class:`genart.evaluate.ensemble.LoadedEnsemble`) combines its members'.
    """
    if hasattr(loaded, "predict_rows"):  # an ensemble
        return loaded.predict_rows(
            rows, degrade=degrade, batch_size=batch_size, workers=workers, progress=progress
        )
    dataset = ManifestDataset(rows, loaded.spec, degrade=degrade)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    logits = []
    for images, _ in tqdm(loader, desc=f"predict{' ' + degrade if degrade else ''}", disable=not progress):
        logits.append(loaded.logits(images))
    classes = loaded.meta.classes
    stacked = torch.cat(logits).numpy() if logits else np.zeros((0, len(classes)), np.float32)
    out = rows.reset_index(drop=True).copy()
    for i in range(stacked.shape[1]):
        out[f"logit_{i}"] = stacked[:, i]
    out["prob"] = ai_probability(stacked, loaded.meta.temperature)
    out["class_target"] = out["target"]
    out["target"] = (out["target"] != 0).astype("int64")
    out["pred_class"] = [classes[i] for i in stacked.argmax(1)] if len(stacked) else []
    return out
