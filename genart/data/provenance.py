"""Where each image came from: join a provenance CSV onto a manifest by sha256.

Collections assembled from public repositories (``wild-train``, ``real-train``) ship a CSV with one row per
file: its repository, path and sha256, and for generated images the generator *family*. Three columns come
out of it:

- ``family``: the generator family (``dalle3``, ``sdxl``, ...) for AI images; for photos, ``real``;
- ``source``: the repository (or collection) the file came from, the unit a model might fingerprint;
- ``origin``: ``repo:path`` of the original file. Crops of one picture share an origin, so splits keep
  them together and leave-one-source-out never trains on a sibling of what it scores.

Rows without a provenance match keep ``family`` = their generator folder and ``source``/``origin`` = none.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

__all__ = ["PROVENANCE_COLUMNS", "attach_provenance", "read_provenance"]

PROVENANCE_COLUMNS = ("family", "source", "origin")


def read_provenance(path: str | Path) -> pd.DataFrame:
    """``sha256``, ``family``, ``source``, ``origin`` from a provenance CSV (``wild-train`` or ``real-*``)."""
    raw = pd.read_csv(path, dtype=str)
    missing = {"sha256", "repo", "path", "label"} - set(raw.columns)
    if missing:
        raise ValueError(f"{path}: not a provenance CSV, missing columns {sorted(missing)}")
    family = raw["family"] if "family" in raw else raw.get("generator", pd.Series(index=raw.index, dtype=str))
    family = family.where(raw["label"] == "ai", "real")
    source = raw["source"] if "source" in raw else raw["repo"]
    return pd.DataFrame(
        {
            "sha256": raw["sha256"],
            "family": family.fillna("unknown"),
            "source": source.fillna(raw["repo"]),
            "origin": raw["repo"] + ":" + raw["path"],
        }
    ).drop_duplicates("sha256")


def attach_provenance(manifest: pd.DataFrame, csvs: Sequence[str | Path]) -> pd.DataFrame:
    """``manifest`` with ``family``, ``source`` and ``origin`` filled from ``csvs`` (by sha256)."""
    table = pd.concat([read_provenance(p) for p in csvs], ignore_index=True).drop_duplicates("sha256")
    out = manifest.drop(columns=[c for c in PROVENANCE_COLUMNS if c in manifest]).merge(
        table, on="sha256", how="left"
    )
    fallback = out["generator"].where(out["label"] == "ai", "real")
    out["family"] = out["family"].fillna(fallback)
    return out
