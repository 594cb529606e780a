"""Leave-one-source-out: how a detector does on a generator family, or a photo source, it never saw.

Each *group* is held out in turn: an AI group is a generator family (``family``), a photo group is the
collection it came from (``source``). A model is fitted on every other group and scores the held-out one,
so every image ends up with one out-of-source score. A group's ROC-AUC compares its out-of-source scores
with those of the other class (each scored when its own group was held out): for a family, "are its images
scored above photos?"; for a photo source, "are its photos scored below generated images?".

What else must leave with a group: a photo source takes its content-aligned reconstructions (rows whose
``source`` is the same) along, so a model never learns a held-out photo through its twin. Groups smaller
than ``min_size`` are pooled per class into ``other ai`` / ``other photos``.

Models that train in seconds (frozen-encoder heads, the shortcut baselines) run this protocol directly;
a fine-tuned network would need one training run per group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from genart.config import GenartConfig
from genart.plots import annotated_heatmap, save_figure

__all__ = ["LosoResult", "leave_one_source_out", "loso_frozen", "loso_groups", "write_loso"]

#: fit on the rows at ``train`` (indices into the frame), return P(ai) for the rows at ``score``.
FitScore = Callable[[np.ndarray, np.ndarray], np.ndarray]


def loso_groups(rows: pd.DataFrame, min_size: int = 20) -> pd.Series:
    """The held-out unit of each row: ``ai/<family>`` or ``nature/<source>``, small ones pooled."""
    family = rows["family"] if "family" in rows else rows["generator"]
    source = rows["source"] if "source" in rows else rows["generator"]
    is_ai = rows["label"] == "ai"
    group = np.where(is_ai, "ai/" + family.astype(str), "nature/" + source.fillna("unknown").astype(str))
    group = pd.Series(group, index=rows.index)
    sizes = group.map(group.value_counts())
    return group.where(sizes >= min_size, np.where(is_ai, "ai/other", "nature/other"))


@dataclass
class LosoResult:
    table: pd.DataFrame  # one row per held-out group: class, n, roc_auc, flagged, mean_p
    scores: pd.DataFrame  # every row with its group and out-of-source P(ai)

    @property
    def mean_auc(self) -> float:
        return float(self.table["roc_auc"].mean())

    def pairs(self) -> pd.DataFrame:
        """ROC-AUC of each held-out family against each held-out photo source (rows: ``ai/...``, columns:
        ``nature/...``), both sides scored out of source: which photo sources pull a family's figure down."""
        scored = self.scores[self.scores["prob"].notna()]
        ai = {g: p["prob"].to_numpy() for g, p in scored[scored["target"] == 1].groupby("group")}
        photos = {g: p["prob"].to_numpy() for g, p in scored[scored["target"] == 0].groupby("group")}
        table = pd.DataFrame(index=sorted(ai), columns=sorted(photos), dtype=float)
        for family, fakes in ai.items():
            for source, real in photos.items():
                y = np.r_[np.ones(len(fakes)), np.zeros(len(real))]
                table.loc[family, source] = roc_auc_score(y, np.r_[fakes, real])
        return table

    def summary(self) -> dict[str, float]:
        by_class = self.table.groupby("class")["roc_auc"].mean()
        worst = self.table["roc_auc"].idxmin()
        return {
            "loso_mean_auc": self.mean_auc,
            "loso_ai_mean_auc": float(by_class.get("ai", np.nan)),
            "loso_nature_mean_auc": float(by_class.get("nature", np.nan)),
            "loso_min_auc": float(self.table.loc[worst, "roc_auc"]),
            "loso_min_group": str(worst),
        }


def leave_one_source_out(
    rows: pd.DataFrame, fit_score: FitScore, min_size: int = 20, progress: bool = True
) -> LosoResult:
    """Hold out each group of :func:`loso_groups` in turn (``rows``: ``label``, ``family``, ``source``)."""
    rows = rows.reset_index(drop=True)
    groups = loso_groups(rows, min_size)
    target = (rows["label"] == "ai").to_numpy().astype(int)
    scores = np.full(len(rows), np.nan)
    source = rows["source"].astype(str) if "source" in rows else pd.Series("", index=rows.index)
    for name in tqdm(sorted(groups.unique()), desc="loso", disable=not progress):
        held = (groups == name).to_numpy()
        leaving = held.copy()
        if name.startswith("nature/"):  # a photo source takes its reconstructions along
            leaving |= source.isin(set(source[held])).to_numpy()
        train = np.flatnonzero(~leaving)
        if len(np.unique(target[train])) < 2:
            continue
        scores[held] = fit_score(train, np.flatnonzero(held))
    frame = rows.assign(group=groups, target=target, prob=scores)
    records = []
    for name, part in frame.groupby("group", sort=True):
        if part["prob"].isna().all():
            continue
        cls = "ai" if name.startswith("ai/") else "nature"
        other = frame[(frame["target"] != part["target"].iloc[0]) & frame["prob"].notna()]
        y = np.r_[part["target"], other["target"]]
        p = np.r_[part["prob"], other["prob"]]
        flagged = float((part["prob"] >= 0.5).mean())
        records.append({"group": name, "class": cls, "n": len(part), "roc_auc": roc_auc_score(y, p),
                        "flagged_ai": flagged, "mean_p_ai": float(part["prob"].mean())})  # fmt: skip
    table = pd.DataFrame.from_records(records).set_index("group")
    return LosoResult(table=table, scores=frame)


def _plot(result: LosoResult, title: str, out: Path) -> Path:
    table = result.table.sort_values("roc_auc")
    fig, ax = plt.subplots(figsize=(6.4, 0.28 * len(table) + 1.2))
    colours = ["#c44e52" if c == "ai" else "#4c72b0" for c in table["class"]]
    ax.barh(
        [f"{g} (n={n})" for g, n in zip(table.index, table["n"], strict=True)],
        table["roc_auc"],
        color=colours,
    )
    ax.axvline(0.5, color="k", lw=0.8, ls=":")
    ax.axvline(result.mean_auc, color="k", lw=1.0, label=f"mean {result.mean_auc:.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("ROC-AUC on the held-out group (red: generator family, blue: photo source)")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, out / "loso.png")


def _confusions(result: LosoResult, pairs: pd.DataFrame, below: float, top: int = 3) -> list[str]:
    """A line per family under ``below``: the photo sources that cost it most.

    A family's ROC-AUC is its row of ``pairs`` averaged with each photo source's image count as the weight,
    so a source's share of the shortfall is ``n * (1 - auc)``; the sources are named in that order.
    """
    table = result.table
    sizes = table["n"]
    lines = []
    for family in table[(table["class"] == "ai") & (table["roc_auc"] < below)].sort_values("roc_auc").index:
        row = pairs.loc[family].dropna()
        cost = (sizes[row.index] * (1 - row)).sort_values(ascending=False, kind="stable")
        named = ", ".join(
            f"{source.split('/', 1)[1]} {row[source]:.2f} (n={sizes[source]})" for source in cost.index[:top]
        )
        lines.append(f"- {family} ({table.loc[family, 'roc_auc']:.3f}): costs most against {named}")
    return lines


def write_loso(
    result: LosoResult, out: str | Path, title: str = "leave-one-source-out", below: float = 0.7
) -> Path:
    """``loso.md`` (table and summary), ``loso.csv``, ``scores.parquet``, ``loso.png``, and the family x photo
    source ROC-AUCs (``loso_pairs.csv``, ``loso_pairs.png``) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(out / "loso.csv")
    keep = [
        c
        for c in ("path", "sha256", "generator", "label", "family", "source", "group", "prob")
        if c in result.scores
    ]
    result.scores[keep].to_parquet(out / "scores.parquet", index=False)
    _plot(result, title, out)
    pairs = result.pairs()
    pairs.to_csv(out / "loso_pairs.csv")
    annotated_heatmap(
        pairs, out / "loso_pairs.png", "held-out family against held-out photo source",
        "ROC-AUC, both sides out of source", vmin=0.0,
    )  # fmt: skip
    summary = result.summary()
    lines = [
        f"# {title}",
        "",
        f"Mean ROC-AUC over {len(result.table)} held-out groups: **{summary['loso_mean_auc']:.3f}** "
        f"(generator families {summary['loso_ai_mean_auc']:.3f}, "
        f"photo sources {summary['loso_nature_mean_auc']:.3f}); "
        f"lowest {summary['loso_min_auc']:.3f} ({summary['loso_min_group']}).",
        "",
        "Each group was left out of training; its images were scored by a model that never saw it. "
        "`flagged_ai` is the share at P(ai) >= 0.5.",
        "",
        result.table.sort_values(["class", "roc_auc"]).to_markdown(floatfmt=".3f"),
        "",
        "![loso](loso.png)",
        "",
        "Each held-out family against each held-out photo source (`loso_pairs.csv`, `loso_pairs.png`). A "
        "family's ROC-AUC is its row averaged with the photo sources' image counts as weights; for each "
        f"family under {below:.2f}, the photo sources that cost it most (n x (1 - ROC-AUC)):",
        "",
        *(_confusions(result, pairs, below) or [f"- no family under {below:.2f}"]),
        "",
        "![pairs](loso_pairs.png)",
        "",
    ]  # fmt: skip
    (out / "loso.md").write_text("\n".join(lines))
    return out / "loso.md"


def loso_frozen(config: GenartConfig, manifest: str | Path, split: str | None = "train", min_size: int = 20):
    """Leave-one-source-out for a frozen-encoder model: one head per held-out group, on cached features."""
    from genart.data.pipeline import select_rows
    from genart.models.predict import ai_probability
    from genart.train.head import fit_head, frozen_detector, head_views
    from genart.train.trainer import init_ray

    init_ray()
    rows = select_rows(manifest, split, config.data.generators, config.data.exclude_generators)
    detector = frozen_detector(config, 2)
    views = [view(rows) for view in head_views(detector, config)]
    target = rows["target"].to_numpy()

    def fit_score(train: np.ndarray, score: np.ndarray) -> np.ndarray:
        x = np.concatenate([view[train] for view in views])
        head = fit_head(x, np.tile(target[train], len(views)), 2, config.model.head_c, config.data.seed)
        with torch.inference_mode():
            return ai_probability(head(torch.from_numpy(views[0][score])))

    return leave_one_source_out(rows, fit_score, min_size=min_size)
