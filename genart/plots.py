"""Figures for reports: a headless backend, one way to save, and the annotated heatmap they share."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written headless: in CI, in Ray jobs, on cluster nodes

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

__all__ = ["annotated_heatmap", "plt", "save_figure"]


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 110) -> Path:
    """Lay out, save as PNG and close (figures left open leak memory in long jobs)."""
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def annotated_heatmap(
    frame: pd.DataFrame,
    path: str | Path,
    title: str,
    colorbar_label: str,
    cmap: str = "RdYlGn",
    vmin: float = 0.5,
    vmax: float = 1.0,
) -> Path:
    """A heatmap of ``frame`` with each cell's value written in it; NaN cells stay blank."""
    values = frame.to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 * frame.shape[1] + 3, 0.45 * frame.shape[0] + 1.5))
    image = ax.imshow(values, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    ax.set_xticks(range(frame.shape[1]), frame.columns, rotation=20, ha="right", fontsize=8)
    ax.set_yticks(range(frame.shape[0]), frame.index, fontsize=8)
    for (i, j), value in np.ndenumerate(values):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label=colorbar_label)
    ax.set_title(title)
    return save_figure(fig, path)
