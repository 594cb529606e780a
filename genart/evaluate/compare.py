"""The model comparison report: one Markdown page and its PNGs, from which a person can decide at a glance.

It evaluates every artefact on the same split (metrics, per-generator accuracy, robustness), measures
inference speed on this machine at batch 1 and 32, adds the mean ensemble of all of them (its threshold
chosen on validation, as ``genart ensemble`` does), and writes a "decision" section generated from those
numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

from genart.data.pipeline import select_rows
from genart.evaluate.ensemble import fit_ensemble
from genart.evaluate.evaluation import ROBUSTNESS, evaluate
from genart.evaluate.metrics import binary_metrics, per_generator
from genart.models.artifact import LoadedModel, load_artifact
from genart.models.ensemble import combine, member_names
from genart.models.predict import is_ai, label_for
from genart.plots import annotated_heatmap, plt, save_figure

__all__ = ["Agreement", "ComparisonReport", "compare", "inference_speed", "verdict_agreement"]


@dataclass
class ComparisonReport:
    markdown: Path
    plots: list[Path]
    metrics: pd.DataFrame
    decision: list[str]


def inference_speed(loaded: LoadedModel, batch: int, repeats: int = 5) -> tuple[float, float]:
    """(images/s, ms per image) of the model's forward pass on this machine, after one warm-up."""
    size = loaded.spec.input_size
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        loaded.model(x)
        start = time.perf_counter()
        for _ in range(repeats):
            loaded.model(x)
        elapsed = (time.perf_counter() - start) / repeats
    return batch / elapsed, 1000 * elapsed / batch


def compare(
    artifacts: list[str],
    manifest: str | Path | pd.DataFrame,
    out: str | Path,
    split: str = "test",
    robustness: tuple[str, ...] = ROBUSTNESS,
    speed: bool = True,
    fit_on: str = "val",
) -> ComparisonReport:
    """Evaluate ``artifacts`` on the manifest's ``split`` and write ``comparison.md`` with its PNGs into
    ``out``; the mean ensemble's threshold is chosen on ``fit_on``."""
    out = Path(out)
    rows, fit_rows = select_rows(manifest, split), select_rows(manifest, fit_on)
    out.mkdir(parents=True, exist_ok=True)
    loaded = [load_artifact(a) for a in artifacts]
    names = member_names([m.meta.name for m in loaded])
    results = [evaluate(m, rows, split=split, robustness=robustness) for m in loaded]

    records = {}
    for name, model, result in zip(names, loaded, results, strict=True):
        record = {k: result.overall[k] for k in ("accuracy", "precision", "recall", "f1", "roc_auc")}
        if "loso_mean_auc" in model.meta.metrics:  # recorded by `genart evaluate --protocol loso --record-in`
            record["loso_mean_auc"] = float(model.meta.metrics["loso_mean_auc"])
        for condition in robustness:
            record[f"acc_{condition}"] = result.robustness.loc["all", condition]
        if speed:
            record["img_s_b1"], record["ms_b1"] = inference_speed(model, 1)
            record["img_s_b32"], record["ms_b32"] = inference_speed(model, 32)
        records[name] = record
    probs = np.stack([r.predictions["prob"].to_numpy() for r in results])
    y = results[0].predictions["target"].to_numpy()
    ensemble_p = combine(probs, "mean")
    ensemble_t = fit_ensemble(loaded, fit_rows, "mean").threshold
    ensemble = binary_metrics(y, ensemble_p, ensemble_t)
    records["ensemble(mean)"] = {k: ensemble[k] for k in ("accuracy", "precision", "recall", "f1", "roc_auc")}
    if speed:
        records["ensemble(mean)"]["ms_b1"] = sum(records[n]["ms_b1"] for n in names)
        records["ensemble(mean)"]["ms_b32"] = sum(records[n]["ms_b32"] for n in names)
    metrics = pd.DataFrame.from_dict(records, orient="index")

    frame = results[0].predictions[["generator", "target"]].copy()
    heat = {}
    for name, result in zip(names, results, strict=True):
        heat[name] = result.per_generator["accuracy"]
    frame["prob"] = ensemble_p
    heat["ensemble(mean)"] = per_generator(frame, ensemble_t)["accuracy"]
    by_generator = pd.DataFrame(heat)

    plots = [
        _plot_roc(names, results, ensemble_p, y, out),
        _plot_confusions(names, results, out),
        _plot_heatmap(by_generator, out),
    ]
    decision = _decision(metrics, names, speed)
    md = [
        "# Model comparison",
        "",
        f"{len(rows)} images of the `{split}` split; each artefact uses its own threshold (from validation), "
        f"the mean ensemble one chosen on `{fit_on}`.",
        "",
        "## Metrics",
        "",
        metrics.to_markdown(floatfmt=".3f"),
        "",
        "`acc_jpeg96`/`acc_jpeg75`: accuracy after re-saving as JPEG at that quality; `acc_half`: after "
        "halving the size. `img_s_b*`/`ms_b*`: forward-pass speed on this machine at batch 1 and 32.",
        "",
        "![ROC](roc.png)",
        "",
        "## Accuracy per generator",
        "",
        by_generator.to_markdown(floatfmt=".3f"),
        "",
        "![by generator](by_generator.png)",
        "",
        "![confusion matrices](confusion.png)",
        "",
        "## Decision",
        "",
        *[f"- {line}" for line in decision],
        "",
    ]
    path = out / "comparison.md"
    path.write_text("\n".join(md))
    metrics.to_csv(out / "metrics.csv")
    by_generator.to_csv(out / "by_generator.csv")
    return ComparisonReport(path, plots, metrics, decision)


def _decision(metrics: pd.DataFrame, names: list[str], speed: bool) -> list[str]:
    singles = metrics.loc[names]
    # Held-out sources judge a detector; the in-source split only when no model has a LOSO figure.
    by = (
        "loso_mean_auc"
        if "loso_mean_auc" in singles and singles["loso_mean_auc"].notna().any()
        else "roc_auc"
    )
    best = singles[by].fillna(0).idxmax()
    judged = (
        f"LOSO mean ROC-AUC {singles.loc[best, by]:.3f} (held-out sources), in-source "
        if by == "loso_mean_auc"
        else ""
    )
    lines = [
        f"Best single model: **{best}**, {judged}ROC-AUC {singles.loc[best, 'roc_auc']:.3f}, accuracy "
        f"{singles.loc[best, 'accuracy']:.3f}"
        + (f", {singles.loc[best, 'ms_b1']:.1f} ms per image at batch 1." if speed else ".")
    ]
    ens = metrics.loc["ensemble(mean)"]
    gain = ens["accuracy"] - singles.loc[best, "accuracy"]
    cost = (
        f" at {ens['ms_b1']:.1f} ms per image ({ens['ms_b1'] / singles.loc[best, 'ms_b1']:.1f}x)"
        if speed
        else ""
    )
    lines.append(
        f"Mean ensemble of all {len(names)}: accuracy {ens['accuracy']:.3f} "
        f"({gain:+.3f} against {best}){cost}, at a threshold chosen on validation; `genart ensemble` "
        "also fits weights."
    )
    if gain > 0.01:
        lines.append("The ensemble gains over one point of accuracy: serve it if its latency is acceptable.")
    else:
        lines.append(f"The ensemble gains under one point of accuracy: serve **{best}** alone.")
    worst_condition = [c for c in metrics.columns if c.startswith("acc_")]
    if worst_condition:
        drops = singles[worst_condition].min(axis=1)
        fragile = drops[drops < singles["accuracy"] - 0.1]
        for name in fragile.index:
            lines.append(
                f"{name} loses over 10 points under a re-save or resize: it may rely on file artefacts."
            )
    return lines


def _plot_roc(names, results, ensemble_p, y, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, result in zip(names, results, strict=True):
        preds = result.predictions
        if preds["target"].nunique() == 2:
            RocCurveDisplay.from_predictions(preds["target"], preds["prob"], name=name, ax=ax)
    if len(np.unique(y)) == 2:
        RocCurveDisplay.from_predictions(
            y, ensemble_p, name="ensemble(mean)", ax=ax, curve_kwargs={"linestyle": "--"}
        )
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_title("ROC curves")
    return save_figure(fig, out / "roc.png")


def _plot_confusions(names, results, out: Path) -> Path:
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False)
    for ax, name, result in zip(axes[0], names, results, strict=True):
        preds = result.predictions
        ConfusionMatrixDisplay.from_predictions(
            preds["target"], is_ai(preds["prob"], result.threshold).astype(int), labels=[0, 1],
            display_labels=["nature", "ai"], ax=ax, colorbar=False,
        )  # fmt: skip
        ax.set_title(name, fontsize=9)
    return save_figure(fig, out / "confusion.png")


def _plot_heatmap(by_generator: pd.DataFrame, out: Path) -> Path:
    return annotated_heatmap(
        by_generator, out / "by_generator.png", "Accuracy per generator and model", "accuracy"
    )


@dataclass
class Agreement:
    compared: int
    agree: int
    missing: int
    max_abs_diff: float
    disagreements: list[str]


def verdict_agreement(api_rows: list[dict], report: str | Path) -> Agreement:
    """Compare API answers (``genart predict`` rows: input, label, probability, error) with a ``genart
    evaluate`` report of the same images: its predictions at its threshold, matched by resolved path."""
    import json

    report = Path(report)
    for name in ("predictions.parquet", "metrics.json"):
        if not (report / name).exists():
            raise FileNotFoundError(f"{report} is not a `genart evaluate` report: no {name}")
    threshold = json.loads((report / "metrics.json").read_text())["threshold"]
    preds = pd.read_parquet(report / "predictions.parquet")
    offline = {
        str(Path(p).resolve()): float(prob) for p, prob in zip(preds["path"], preds["prob"], strict=True)
    }
    compared = agree = missing = 0
    worst, lines = 0.0, []
    for row in api_rows:
        if row.get("error"):
            continue
        key = str(Path(row["input"]).resolve())
        if key not in offline:
            missing += 1
            continue
        prob = offline[key]
        expected = label_for(prob, threshold)
        compared += 1
        worst = max(worst, abs(float(row["probability"]) - prob))
        if row["label"] == expected:
            agree += 1
        else:
            lines.append(f"{row['input']}: API {row['label']} P(ai)={row['probability']:.4f}, "
                         f"evaluate {expected} P(ai)={prob:.4f} (threshold {threshold:.4f})")  # fmt: skip
    return Agreement(compared, agree, missing, worst, lines)
