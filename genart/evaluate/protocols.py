"""Evaluation protocols beyond one test split: leave-one-generator-out (LOGO).

LOGO answers the question users care about: how does a detector do on a generator it has never seen?
For each generator it trains on all the others (one Ray Train run each) and tests on the held-out
generator's test images, next to the in-distribution score on the generators it did see.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from genart.config import GenartConfig
from genart.data.index import read_manifest, usable
from genart.data.pipeline import select_rows
from genart.evaluate.evaluation import evaluate

__all__ = ["leave_one_generator_out", "write_logo_report"]


def leave_one_generator_out(
    config: GenartConfig,
    manifest: str | Path,
    out: str | Path = "artifacts/logo",
    track: bool = True,
) -> pd.DataFrame:
    """Train one model per held-out generator; return one row per generator (and a mean row).

    The generators taken in turn are ``config.data.generators`` (all in the manifest when unset); each model
    trains on the others among them.
    """
    from genart.models.artifact import load_artifact
    from genart.train.trainer import fit

    available = sorted(usable(read_manifest(manifest))["generator"].unique())
    generators = config.data.generators or available
    unknown = sorted(set(generators) - set(available))
    if unknown:
        raise ValueError(f"generators not in the manifest: {unknown}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    records = []
    for held_out in generators:
        cfg = config.model_copy(deep=True)
        cfg.data.generators = [g for g in generators if g != held_out]
        cfg.train.run_name = f"logo-{held_out}-{stamp}"
        result = fit(
            cfg, manifest, out=out, track=track, evaluate_test=False, artifact_name=f"logo-{held_out}"
        )
        loaded = load_artifact(result.artifact)
        unseen = evaluate(loaded, select_rows(manifest, "test", generators=[held_out]), robustness=())
        seen_rows = select_rows(manifest, "test", generators=cfg.data.generators)
        seen = evaluate(loaded, seen_rows, robustness=())
        records.append(
            {
                "held_out": held_out,
                "unseen_accuracy": unseen.overall["accuracy"],
                "unseen_auc": unseen.overall["roc_auc"],
                "unseen_detection_rate": unseen.overall["detection_rate"],
                "unseen_false_positive_rate": unseen.overall["false_positive_rate"],
                "seen_accuracy": seen.overall["accuracy"],
                "seen_auc": seen.overall["roc_auc"],
                "artifact": str(result.artifact),
            }
        )
    table = pd.DataFrame.from_records(records).set_index("held_out")
    table.loc["mean"] = table.drop(columns=["artifact"]).mean()
    return table


def write_logo_report(table: pd.DataFrame, out: str | Path) -> Path:
    """``logo.csv`` (with each model's artefact) and ``logo.md`` (the table a person reads) in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "logo.csv")
    path = out / "logo.md"
    path.write_text(
        "# Leave one generator out\n\n" + table.drop(columns=["artifact"]).to_markdown(floatfmt=".3f")
    )
    return path
