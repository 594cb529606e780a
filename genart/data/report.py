"""The data report: counts, sizes, formats, shortcuts, corrupt files and duplicates, as Markdown plus PNGs.

Its main job is to say out loud when something other than generation artefacts predicts the label. On
GenImage, real photos are JPEG and fakes are mostly PNG, and image sizes differ per generator; a model can
score well by learning that. :func:`shortcut_scores` measures it: cross-validated balanced accuracy of a
small decision tree that sees only one kind of metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.tree import DecisionTreeClassifier

from genart.data.index import usable
from genart.data.split import leaked_hashes, near_duplicates
from genart.plots import annotated_heatmap, plt, save_figure

__all__ = [
    "SHORTCUT_WARN",
    "ReportResult",
    "metadata_features",
    "pixel_traces",
    "shortcut_scores",
    "transformed_shortcut_scores",
    "write_report",
]

#: Balanced accuracy (chance = 0.5) above which a metadata feature is flagged as a shortcut.
SHORTCUT_WARN = 0.7
TINY_SIDE = 64

_FEATURES: dict[str, list[str]] = {
    "format": ["format"],
    "size (width x height)": ["width", "height"],
    "file bytes": ["bytes"],
    "JPEG quality": ["jpeg_quality"],
    "all metadata": ["format", "width", "height", "bytes", "jpeg_quality"],
}


@dataclass
class ReportResult:
    markdown: Path
    plots: list[Path]
    warnings: list[str]


def metadata_features(rows: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Numeric features from manifest metadata: formats one-hot, missing JPEG quality as -1."""
    parts = []
    for col in columns:
        if col == "format":
            parts.append(pd.get_dummies(rows["format"].fillna("none"), dtype=float).to_numpy())
        else:
            parts.append(rows[[col]].astype(float).fillna(-1.0).to_numpy())
    return np.hstack(parts)


def shortcut_scores(manifest: pd.DataFrame, by_generator: bool = False) -> pd.DataFrame:
    """How well metadata alone predicts the label: 5-fold CV balanced accuracy per feature set.

    With ``by_generator``, the score is computed within each generator (the benchmark's setting: one
    generator's fakes against its own real images) and one row per generator is returned.
    """
    rows = usable(manifest)
    groups = rows.groupby("generator") if by_generator else [("all", rows)]
    records = []
    for name, part in groups:
        y = (part["label"] == "ai").to_numpy()
        minority = min(int(y.sum()), int((~y).sum()))
        if by_generator and minority == 0:
            continue  # a folder of one label has no confound of its own; the pooled score covers it
        record: dict[str, object] = {"scope": name, "n": len(part)}
        for feature, cols in _FEATURES.items():
            if minority < 2:
                record[feature] = np.nan
                continue
            cv = StratifiedKFold(n_splits=min(5, minority), shuffle=True, random_state=0)
            tree = DecisionTreeClassifier(max_depth=4, min_samples_leaf=2, random_state=0)
            scores = cross_val_score(
                tree, metadata_features(part, cols), y, cv=cv, scoring="balanced_accuracy"
            )
            record[feature] = float(np.mean(scores))
        records.append(record)
    return pd.DataFrame.from_records(records, columns=["scope", "n", *_FEATURES]).set_index("scope")


def pixel_traces(image) -> np.ndarray:
    """What is left of container and size in the pixels a model sees (a (3, H, W) tensor): the 8x8 JPEG grid
    strength (rows and columns) and the high-frequency energy (re-sampling and compression smooth it)."""
    gray = np.asarray(image, dtype=np.float64).mean(axis=0)
    dx, dy = np.abs(np.diff(gray, axis=1)), np.abs(np.diff(gray, axis=0))
    on_x, on_y = np.arange(dx.shape[1]) % 8 == 7, np.arange(dy.shape[0]) % 8 == 7
    grid = [dx[:, on_x].mean() / (dx[:, ~on_x].mean() + 1e-9), dy[on_y].mean() / (dy[~on_y].mean() + 1e-9)]
    lap = gray[1:-1, 1:-1] * 4 - gray[:-2, 1:-1] - gray[2:, 1:-1] - gray[1:-1, :-2] - gray[1:-1, 2:]
    return np.array([*grid, np.log(np.abs(lap).mean() + 1e-9), np.log(gray.std() + 1e-9)])


def transformed_shortcut_scores(
    manifest: pd.DataFrame, transforms: dict[str, object], sample: int = 400, seed: int = 0
) -> pd.DataFrame:
    """Balanced accuracy (5-fold CV, depth-4 tree) of :func:`pixel_traces` after each named transform, on a
    sample balanced by label: does anything but content still separate the prepared classes?"""
    from genart.data.transforms import ImageDecodeError, decode_image

    rows = usable(manifest)
    rows = rows[rows["label"].isin(["ai", "nature"])]
    if "split" in rows and (rows["split"] == "train").any():
        rows = rows[rows["split"] == "train"]
    per_label = max(5, sample // 2)
    rows = pd.concat([g.sample(min(len(g), per_label), random_state=seed) for _, g in rows.groupby("label")])
    images, labels = [], []
    for path, label in zip(rows["path"], rows["label"], strict=True):
        try:
            images.append(decode_image(Path(path).read_bytes()))
            labels.append(label == "ai")
        except (OSError, ImageDecodeError):
            continue
    y = np.array(labels)
    records = []
    import random

    import torch

    for name, transform in transforms.items():
        random.seed(seed)
        torch.manual_seed(seed)
        x = np.stack([pixel_traces(transform(image)) for image in images])
        minority = min(int(y.sum()), int((~y).sum()))
        if minority < 2:
            continue
        cv = StratifiedKFold(n_splits=min(5, minority), shuffle=True, random_state=seed)
        tree = DecisionTreeClassifier(max_depth=4, min_samples_leaf=2, random_state=seed)
        score = cross_val_score(tree, x, y, cv=cv, scoring="balanced_accuracy")
        records.append({"images seen as": name, "n": len(y), "balanced accuracy": float(score.mean())})
    return pd.DataFrame.from_records(records).set_index("images seen as")


def _table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    return df.to_markdown(floatfmt=floatfmt) if len(df) else "_none_"


def _plot_counts(rows: pd.DataFrame, out: Path) -> Path:
    split_col = "split" if rows["split"].notna().any() else None
    keys = ["generator", "label"] + ([split_col] if split_col else [])
    counts = rows.groupby(keys).size().unstack(keys[1:], fill_value=0)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    counts.plot.bar(stacked=True, ax=ax, width=0.8, colormap="tab20")
    ax.set_ylabel("images")
    ax.set_title("Images per generator, label" + (" and split" if split_col else ""))
    ax.legend(fontsize=7, title=" / ".join(keys[1:]), loc="upper left", bbox_to_anchor=(1.01, 1.0))
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right", fontsize=8)
    return save_figure(fig, out / "counts.png")


def _plot_sizes(rows: pd.DataFrame, out: Path) -> Path:
    generators = sorted(rows["generator"].unique())
    fig, ax = plt.subplots(figsize=(10, 4.5))
    data, labels, colors = [], [], []
    for gen in generators:
        for label, color in (("nature", "tab:green"), ("ai", "tab:red")):
            sel = rows[(rows["generator"] == gen) & (rows["label"] == label)]
            if len(sel):
                data.append(np.sqrt(sel["width"].astype(float) * sel["height"].astype(float)))
                labels.append(f"{gen}\n{label}")
                colors.append(color)
    parts = ax.boxplot(data, patch_artist=True, widths=0.6)
    for patch, color in zip(parts["boxes"], colors, strict=True):
        patch.set_facecolor(color)
        patch.set_alpha(0.5)
    ax.set_xticks(range(1, len(labels) + 1), labels, rotation=60, ha="right", fontsize=6)
    ax.set_yscale("log")
    ax.set_ylabel("sqrt(width x height), pixels")
    ax.set_title("Image size per generator (green: nature, red: ai)")
    return save_figure(fig, out / "sizes.png")


def _plot_shortcuts(scores: pd.DataFrame, out: Path) -> Path:
    return annotated_heatmap(
        scores.drop(columns=["n"]).astype(float),
        out / "shortcuts.png",
        title="What metadata alone predicts the label (red = shortcut)",
        colorbar_label="balanced accuracy (0.5 = chance)",
        cmap="RdYlGn_r",
    )


def write_report(
    manifest: pd.DataFrame,
    out: str | Path,
    title: str = "genart data report",
    transforms: dict[str, object] | None = None,
) -> ReportResult:
    """Write ``report.md`` and its PNGs into ``out``; return the paths and the shortcut warnings.

    ``transforms`` (name -> image transform, e.g. a model's eval and training transforms) adds the shortcut
    check on what the model sees after each of them."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = usable(manifest)
    if "split" not in manifest:
        manifest = manifest.assign(split=None)
        rows = rows.assign(split=None)
    meta = manifest.attrs.get("genart", {})
    warnings: list[str] = []
    plots: list[Path] = []
    md: list[str] = [f"# {title}", ""]

    unreadable = manifest[~manifest["readable"].fillna(False).astype(bool)]
    unlabelled = manifest[manifest["readable"].fillna(False).astype(bool)].drop(rows.index)
    md += [
        "## Summary",
        "",
        f"- root: `{meta.get('root', '?')}`",
        f"- files indexed: {len(manifest)}; usable: {len(rows)}; unreadable: {len(unreadable)}; "
        f"outside the layout: {len(unlabelled)}; non-image files skipped: {meta.get('skipped_count', 0)}",
        f"- generators: {rows['generator'].nunique()} ({', '.join(sorted(rows['generator'].unique()))})",
        f"- extension does not match the bytes: {int(manifest['ext_mismatch'].fillna(False).sum())}",
        "",
    ]
    if not len(rows):
        md += ["No usable images: nothing more to report.", ""]
        path = out / "report.md"
        path.write_text("\n".join(md))
        return ReportResult(path, plots, ["no usable images"])

    keys = ["generator", "label"] + (["split"] if rows["split"].notna().any() else [])
    counts = rows.groupby(keys).size().unstack(keys[1:], fill_value=0)
    md += [
        "## Counts per generator x label" + (" x split" if len(keys) == 3 else ""),
        "",
        _table(counts, "d"),
        "",
    ]
    plots.append(_plot_counts(rows, out))
    md += ["![counts](counts.png)", ""]

    sizes = rows.groupby(["generator", "label"]).agg(
        median_width=("width", "median"),
        median_height=("height", "median"),
        min_side=("width", lambda s: int(np.minimum(s, rows.loc[s.index, "height"]).min())),
        distinct_sizes=(
            "width",
            lambda s: int(rows.loc[s.index, ["width", "height"]].drop_duplicates().shape[0]),
        ),
    )
    md += ["## Image sizes", "", _table(sizes, ".0f"), "", "![sizes](sizes.png)", ""]
    plots.append(_plot_sizes(rows, out))

    formats = rows.groupby(["format", "label"]).size().unstack("label", fill_value=0)
    by_gen_format = rows.groupby(["generator", "label", "format"]).size().unstack("format", fill_value=0)
    overall = shortcut_scores(rows)
    per_gen = shortcut_scores(rows, by_generator=True)
    scores = pd.concat([overall, per_gen])
    for scope, record in scores.iterrows():
        for feature in ("format", "size (width x height)"):
            value = record[feature]
            if not np.isnan(value) and value >= SHORTCUT_WARN:
                where = "the pooled data" if scope == "all" else f"generator {scope}"
                warnings.append(
                    f"{feature} alone predicts the label in {where} (balanced accuracy {value:.2f})"
                )
    md += ["## Formats and the label (the known GenImage bias)", "", _table(formats, "d"), ""]
    md += ["Per generator:", "", _table(by_gen_format, "d"), ""]
    md += [
        "### Shortcut check",
        "",
        "Cross-validated balanced accuracy (0.5 = chance) of a depth-4 decision tree that sees only the "
        f"named metadata. At or above {SHORTCUT_WARN} the metadata is a shortcut.",
        "",
        _table(scores),
        "",
        "![shortcuts](shortcuts.png)",
        "",
    ]
    plots.append(_plot_shortcuts(scores, out))
    if warnings:
        md += ["**Warnings**", ""] + [f"- ⚠️ {w}" for w in warnings] + [""]
        md += [
            "A model can learn these instead of generation artefacts. Control them: re-encode both classes "
            "alike (`genart data synth --formats match` for the sample data), crop instead of resize, train "
            "with JPEG re-compression, and read the robustness columns of `genart evaluate`.",
            "",
        ]
    else:
        md += ["No metadata shortcut found above the warning level.", ""]
    if transforms:
        after = transformed_shortcut_scores(manifest, transforms)
        md += [
            "### Shortcuts after the transform",
            "",
            "Metadata is gone once an image is a tensor, but its traces are not: the 8x8 JPEG grid, the "
            "high-frequency energy left by re-sampling, the contrast. The same tree on those, measured on "
            "the prepared images (a label-balanced sample of the training split). A class-matched training "
            "transform should bring it to chance (0.5).",
            "",
            _table(after),
            "",
        ]
        for name, value in after["balanced accuracy"].items():
            if value >= SHORTCUT_WARN:
                warnings.append(
                    f"pixel traces predict the label after the {name} (balanced accuracy {value:.2f})"
                )

    mismatched = manifest[manifest["ext_mismatch"].fillna(False).astype(bool)]
    md += [
        "## Extension and content disagree",
        "",
        _table(mismatched[["relpath", "ext", "format"]].head(200)),
        "",
    ]
    md += ["## Unreadable files", "", _table(unreadable[["relpath", "bytes", "error"]].head(200)), ""]
    tiny = rows[np.minimum(rows["width"], rows["height"]) < TINY_SIDE]
    md += [
        f"## Tiny images (a side under {TINY_SIDE} px)",
        "",
        _table(tiny[["relpath", "width", "height"]].head(200)),
        "",
    ]

    readable = manifest[manifest["sha256"].notna()]
    dup_groups = readable.groupby("sha256").filter(lambda g: len(g) > 1)
    cross_label = dup_groups.groupby("sha256")["label"].nunique()
    md += [
        "## Duplicates",
        "",
        f"- byte-identical files: {len(dup_groups)} in {dup_groups['sha256'].nunique()} groups; "
        f"groups with both labels: {int((cross_label > 1).sum())}",
    ]
    if "split" in manifest and manifest["split"].notna().any():
        leaked = leaked_hashes(manifest)
        md.append(f"- sha256 in more than one split: {leaked['sha256'].nunique()}")
        if len(leaked):
            warnings.append(f"{leaked['sha256'].nunique()} identical files appear in more than one split")
    near = near_duplicates(manifest)
    crossing = int(near["crosses_splits"].sum()) if len(near) else 0
    md += [
        f"- near-identical re-encodes (same difference hash, different bytes): {len(near)} files, "
        f"{crossing} of them across splits",
        "",
        _table(dup_groups[["sha256", "relpath", "label"]].head(50)),
        "",
        _table(near.head(50)),
        "",
    ]
    skipped = meta.get("skipped", [])
    if skipped:
        md += ["## Non-image files skipped", "", *[f"- `{s}`" for s in skipped[:50]], ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return ReportResult(path, plots, warnings)
