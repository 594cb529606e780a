"""Evaluating an artefact: calibration on validation, metrics per generator, robustness, plots, report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

from genart.data.transforms import DEGRADATIONS
from genart.evaluate.metrics import (
    binary_metrics,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    per_generator,
)
from genart.models.artifact import LoadedModel
from genart.models.predict import ai_probability, is_ai, predict_rows
from genart.plots import plt, save_figure

__all__ = [
    "ROBUSTNESS",
    "Calibration",
    "EvaluationResult",
    "calibrate",
    "evaluate",
    "evaluate_artifact",
    "manifest_label",
    "recorded_calibration",
    "write_evaluation",
]

ROBUSTNESS: tuple[str, ...] = tuple(DEGRADATIONS)


@dataclass
class Calibration:
    temperature: float
    threshold: float
    ece_before: float
    ece_after: float


@dataclass
class EvaluationResult:
    name: str
    split: str
    threshold: float
    overall: dict[str, float]
    per_generator: pd.DataFrame
    robustness: pd.DataFrame
    predictions: pd.DataFrame
    calibration: Calibration | None = None
    attribution: pd.DataFrame | None = None
    plots: list[Path] = field(default_factory=list)
    data: str | None = None  # which data, e.g. the manifest's name: reports on other sources say so


def manifest_label(manifest: str | Path) -> str:
    """What a report calls the data it scored: the manifest's name without ``.split.parquet``."""
    return Path(manifest).name.removesuffix(".parquet").removesuffix(".split")


def logit_columns(preds: pd.DataFrame) -> list[str]:
    return sorted((c for c in preds.columns if c.startswith("logit_")), key=lambda c: int(c.split("_")[1]))


def calibrate(
    loaded: LoadedModel, val_rows: pd.DataFrame, workers: int = 0, max_fpr: float | None = None
) -> Calibration:
    """Fit the temperature and choose the threshold (see :func:`choose_threshold`) on validation rows; ECE
    before and after."""
    preds = predict_rows(loaded, val_rows, workers=workers)
    logits = preds[logit_columns(preds)].to_numpy()
    y = preds["target"].to_numpy()
    temperature = fit_temperature(logits, preds["class_target"].to_numpy())
    calibrated = ai_probability(logits, temperature)
    return Calibration(
        temperature=temperature,
        threshold=choose_threshold(y, calibrated, max_fpr),
        ece_before=expected_calibration_error(y, ai_probability(logits)),
        ece_after=expected_calibration_error(y, calibrated),
    )


def recorded_calibration(loaded) -> Calibration | None:
    """The calibration written down when the model was made: a trained artefact's temperature, threshold and
    ECE on validation; an ensemble's threshold and the ECE of its combined probability on validation."""
    metrics = getattr(loaded.meta, "metrics", None)
    if metrics and {"ece_before", "ece_after"} <= set(metrics):
        return Calibration(
            temperature=loaded.meta.temperature,
            threshold=loaded.meta.threshold,
            ece_before=float(metrics["ece_before"]),
            ece_after=float(metrics["ece_after"]),
        )
    from genart.models.ensemble import LoadedEnsemble

    if isinstance(loaded, LoadedEnsemble) and "val_ece" in loaded.spec.metrics:
        ece = float(loaded.spec.metrics["val_ece"])
        return Calibration(temperature=1.0, threshold=loaded.spec.threshold, ece_before=ece, ece_after=ece)
    return None


def evaluate(
    loaded: LoadedModel,
    rows: pd.DataFrame,
    split: str = "test",
    robustness: tuple[str, ...] = ROBUSTNESS,
    workers: int = 0,
    progress: bool = False,
    calibration: Calibration | None = None,
) -> EvaluationResult:
    """Metrics overall and per generator at the artefact's threshold, plus accuracy under degradations."""
    threshold = loaded.meta.threshold
    preds = predict_rows(loaded, rows, workers=workers, progress=progress)
    table = per_generator(preds, threshold)
    robust = {"clean": table["accuracy"]}
    for condition in robustness:
        degraded = predict_rows(loaded, rows, degrade=condition, workers=workers, progress=progress)
        robust[condition] = per_generator(degraded, threshold)["accuracy"]
    return EvaluationResult(
        name=loaded.meta.name,
        split=split,
        threshold=threshold,
        overall=binary_metrics(preds["target"], preds["prob"], threshold),
        per_generator=table,
        robustness=pd.DataFrame(robust),
        predictions=preds,
        calibration=calibration,
        attribution=attribution_recall(preds, loaded.meta.classes) if len(loaded.meta.classes) > 2 else None,
    )


def evaluate_artifact(
    artifact: str | Path,
    manifest: str | Path,
    split: str | None = None,
    calibrate_on: str | None = None,
    robustness: tuple[str, ...] = ROBUSTNESS,
    out: str | Path | None = None,
    workers: int = 0,
    progress: bool = False,
) -> tuple[EvaluationResult, Path]:
    """Evaluate an artefact or an ensemble directory on ``split`` of ``manifest`` and write its report.

    ``split`` defaults to test when the manifest has one, else every usable row (an unsplit folder).
    ``calibrate_on`` refits temperature and threshold on that split first, by the rule the artefact was
    trained with (its ``train.threshold_max_fpr``); otherwise the calibration the artefact (or ensemble)
    recorded is reported. The report goes to ``out``, by default
    ``reports/eval/<name>-<split>``. ValueError or FileNotFoundError say what to change.
    """
    from genart.data.index import read_manifest
    from genart.data.pipeline import select_rows
    from genart.models.ensemble import LoadedEnsemble, load_model_or_ensemble

    loaded = load_model_or_ensemble(artifact)
    if calibrate_on and isinstance(loaded, LoadedEnsemble):
        raise ValueError(
            "an ensemble's threshold is chosen on validation by `genart ensemble`; drop --calibrate-on"
        )
    if split is None:
        split = "test" if "test" in set(read_manifest(manifest)["split"].dropna()) else None
    classes = loaded.meta.classes if len(loaded.meta.classes) > 2 else None
    rows = select_rows(manifest, split, classes=classes)
    if calibrate_on and calibrate_on == split:
        raise ValueError(
            f"--calibrate-on equals --split ({split}): a threshold fitted on what it scores flatters it"
        )
    if calibrate_on:
        max_fpr = (loaded.meta.train_config.get("train") or {}).get("threshold_max_fpr")
        calibration = calibrate(
            loaded, select_rows(manifest, calibrate_on, classes=classes), workers=workers, max_fpr=max_fpr
        )
        loaded.meta.temperature, loaded.meta.threshold = calibration.temperature, calibration.threshold
    else:
        calibration = recorded_calibration(loaded)
    result = evaluate(
        loaded, rows, split=split or "all", robustness=robustness, workers=workers, progress=progress,
        calibration=calibration,
    )  # fmt: skip
    result.data = manifest_label(manifest)
    report = write_evaluation(result, out or Path("reports/eval") / f"{loaded.meta.name}-{split or 'all'}")
    return result, report


def attribution_recall(preds: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Per true class, in the model's class order: images, recall of the class, and the commonest mistake."""
    truth = [classes[i] for i in preds["class_target"]]
    frame = pd.DataFrame({"true": truth, "pred": preds["pred_class"]})
    records = []
    for name in classes:
        part = frame[frame["true"] == name]
        wrong = part[part["pred"] != name]["pred"]
        records.append(
            {
                "class": name,
                "n": len(part),
                "recall": float((part["pred"] == name).mean()) if len(part) else float("nan"),
                "most_confused_with": wrong.mode().iloc[0] if len(wrong) else "",
            }
        )
    return pd.DataFrame.from_records(records).set_index("class")


def _plot_confusion(result: EvaluationResult, out: Path) -> Path:
    preds = result.predictions
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    predicted = is_ai(preds["prob"], result.threshold).astype(int)
    ConfusionMatrixDisplay.from_predictions(
        preds["target"], predicted, labels=[0, 1], display_labels=["nature", "ai"], ax=ax, colorbar=False
    )
    ax.set_title(f"{result.name} on {result.split} (threshold {result.threshold:.2f})", fontsize=9)
    return save_figure(fig, out / "confusion.png")


def _plot_roc(result: EvaluationResult, out: Path) -> Path:
    preds = result.predictions
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    if preds["target"].nunique() == 2:
        RocCurveDisplay.from_predictions(preds["target"], preds["prob"], name=result.name, ax=ax)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_title(f"ROC on {result.split}", fontsize=9)
    return save_figure(fig, out / "roc.png")


def _plot_errors(result: EvaluationResult, out: Path, n: int = 12, columns: int = 4) -> Path | None:
    """The most confident mistakes as a thumbnail grid (``errors.png``), each with its folder, its true
    label and P(ai); None when there is no mistake or no image can be read."""
    from PIL import Image

    preds = result.predictions
    wrong = preds[is_ai(preds["prob"], result.threshold).astype(int) != preds["target"]]
    if wrong.empty or "path" not in wrong:
        return None
    wrong = wrong.assign(margin=(wrong["prob"] - result.threshold).abs()).nlargest(n, "margin")
    rows = -(-len(wrong) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.3 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    shown = 0
    for ax, (_, row) in zip(axes.flat, wrong.iterrows(), strict=False):
        try:
            with Image.open(row["path"]) as image:
                image.draft("RGB", (256, 256))
                thumb = image.convert("RGB")
                thumb.thumbnail((256, 256))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
        ax.imshow(thumb)
        truth = "ai" if row["target"] == 1 else "nature"
        ax.set_title(f"{row['generator'][:26]}\ntrue {truth} · P(ai) {row['prob']:.2f}", fontsize=7)
        shown += 1
    if not shown:
        plt.close(fig)
        return None
    fig.suptitle(
        f"{result.name} on {result.split}: the {shown} most confident mistakes "
        f"(threshold {result.threshold:.2f})",
        fontsize=9,
    )
    return save_figure(fig, out / "errors.png")


def write_evaluation(result: EvaluationResult, out: str | Path) -> Path:
    """Write ``evaluation.md``, ``metrics.json``, ``per_generator.csv``, ``predictions.parquet`` and PNGs
    (confusion matrix, ROC, and a grid of the most confident mistakes)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result.plots = [_plot_confusion(result, out), _plot_roc(result, out)]
    errors = _plot_errors(result, out)
    if errors:
        result.plots.append(errors)
    result.per_generator.to_csv(out / "per_generator.csv")
    result.robustness.to_csv(out / "robustness.csv")
    result.predictions.to_parquet(out / "predictions.parquet", index=False)
    payload = {"name": result.name, "split": result.split, "data": result.data, "threshold": result.threshold,
               **result.overall}  # fmt: skip
    if result.calibration:
        payload["calibration"] = result.calibration.__dict__
    (out / "metrics.json").write_text(json.dumps(payload, indent=2))
    md = [
        f"# Evaluation of {result.name} on {result.split}",
        "",
        f"Threshold {result.threshold:.3f} (chosen on validation). {len(result.predictions)} images.",
        "",
        "## Per generator",
        "",
        result.per_generator.to_markdown(floatfmt=".3f"),
        "",
    ]
    if len(result.robustness.columns):
        md += [
            "## Robustness (accuracy after a JPEG re-save at quality 96 and 75, and a half-size thumbnail)",
            "",
            result.robustness.to_markdown(floatfmt=".3f"),
            "",
        ]
    if result.attribution is not None:
        result.attribution.to_csv(out / "attribution.csv")
        md += [
            "## Attribution (recall per class, in the model's class order)",
            "",
            result.attribution.to_markdown(floatfmt=".3f"),
            "",
        ]
    if result.calibration:
        c = result.calibration
        md += [
            "## Calibration (on validation)",
            "",
            f"temperature {c.temperature:.3f}; expected calibration error {c.ece_before:.4f} before, "
            f"{c.ece_after:.4f} after",
            "",
        ]
    md += ["![confusion](confusion.png) ![roc](roc.png)", ""]
    if errors:
        md += ["## The most confident mistakes", "", "![errors](errors.png)", ""]
    path = out / "evaluation.md"
    path.write_text("\n".join(md))
    return path
