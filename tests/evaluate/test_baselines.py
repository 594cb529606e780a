import json
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from genart.cli import app
from genart.data.index import read_manifest
from genart.evaluate.baselines import metadata_matrix


def test_metadata_features_have_fixed_columns_whatever_the_formats() -> None:
    jpeg = pd.DataFrame(
        {"width": [512], "height": [512], "bytes": [100_000], "format": ["JPEG"], "jpeg_quality": [95]}
    )
    other = pd.DataFrame(
        {"width": [64], "height": [32], "bytes": [900], "format": ["GIF"], "jpeg_quality": [None]}
    )
    a, b = metadata_matrix(jpeg), metadata_matrix(other)
    assert a.shape == b.shape == (1, 9)
    assert a[0, 4] == 95 and b[0, 4] == -1.0  # JPEG quality, -1 when not a JPEG
    assert a[0, 5] == 1 and b[0, 8] == 1  # one-hot JPEG / other


def test_metadata_baseline_finds_the_format_trap(synth_manifest: Path, tmp_path: Path) -> None:
    """The sample data with formats='trap' (fakes PNG, photos JPEG): metadata alone must nearly solve it."""
    out = tmp_path / "b"
    result = CliRunner().invoke(
        app,
        ["baseline", "metadata", "--data", str(synth_manifest), "--evaluate-on", f"again={synth_manifest}",
         "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    test = json.loads((out / "baseline-metadata-test" / "metrics.json").read_text())
    assert test["name"] == "baseline-metadata" and test["split"] == "test" and test["roc_auc"] > 0.95
    assert json.loads((out / "baseline-metadata-again" / "metrics.json").read_text())["data"] == "again"
    everything = pd.read_parquet(out / "baseline-metadata-again" / "predictions.parquet")
    assert len(everything) == len(read_manifest(synth_manifest))
    assert "## Per generator" in (out / "baseline-metadata-again" / "evaluation.md").read_text()


def test_content_baseline_runs_through_the_same_evaluation(synth_manifest: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["baseline", "content", "--data", str(synth_manifest), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    preds = pd.read_parquet(tmp_path / "baseline-content-test" / "predictions.parquet")
    assert len(preds) and preds["prob"].between(0, 1).all() and np.isfinite(preds["prob"]).all()
    assert "ROC-AUC" in result.output


def test_baseline_command_rejects_bad_input(synth_manifest: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    unknown = runner.invoke(app, ["baseline", "pixels", "--data", str(synth_manifest)])
    assert unknown.exit_code == 2 and "unknown baseline" in unknown.output
    bad = runner.invoke(
        app, ["baseline", "metadata", "--data", str(synth_manifest), "--evaluate-on", "nolabel"]
    )
    assert bad.exit_code == 2 and "LABEL=MANIFEST" in bad.output
