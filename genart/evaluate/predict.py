"""Batch prediction over manifest rows with a loaded artefact, optionally under a degradation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from genart.data.pipeline import ManifestDataset
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
    """``rows`` (from :func:`genart.data.pipeline.select_rows`) with ``logit_0``, ``logit_1`` and ``prob``.

    ``prob`` is the calibrated P(ai): the artefact's temperature is applied.
    """
    dataset = ManifestDataset(rows, loaded.spec, degrade=degrade)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    logits = []
    for images, _ in tqdm(loader, desc=f"predict{' ' + degrade if degrade else ''}", disable=not progress):
        logits.append(loaded.logits(images))
    stacked = torch.cat(logits).numpy() if logits else np.zeros((0, 2), np.float32)
    out = rows.reset_index(drop=True).copy()
    out["logit_0"], out["logit_1"] = stacked[:, 0], stacked[:, 1]
    out["prob"] = torch.softmax(torch.from_numpy(stacked) / loaded.meta.temperature, dim=1)[:, 1].numpy()
    return out
