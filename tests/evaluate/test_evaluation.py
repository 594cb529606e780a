from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from genart.cli import app
from genart.data.pipeline import select_rows
from genart.evaluate.evaluation import ROBUSTNESS, calibrate, evaluate, write_evaluation
from genart.models.artifact import ArtifactMeta, load_artifact, save_artifact
from genart.models.predict import predict_rows
from genart.models.zoo import build_model, get_entry


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model, spec = build_model("tiny", pretrained=False, input_size=48)
    entry = get_entry("tiny")
    meta = ArtifactMeta(name="tiny", timm_id=entry.timm_id, input=spec.to_dict(), threshold=0.5)
    return save_artifact(model, meta, tmp_path_factory.mktemp("art") / "tiny")


def test_predictions_are_probabilities_with_the_artefact_temperature(
    synth_manifest: Path, tiny_artifact: Path
) -> None:
    loaded = load_artifact(tiny_artifact)
    rows = select_rows(synth_manifest, "val")
    preds = predict_rows(loaded, rows)
    assert len(preds) == len(rows) and preds["prob"].between(0, 1).all()
    loaded.meta.temperature = 10.0
    softer = predict_rows(loaded, rows)
    assert (softer["prob"] - 0.5).abs().max() < (preds["prob"] - 0.5).abs().max()
    pd.testing.assert_series_equal(softer["logit_1"], preds["logit_1"])


def test_evaluate_reports_per_generator_and_robustness(
    synth_manifest: Path, tiny_artifact: Path, tmp_path: Path
) -> None:
    loaded = load_artifact(tiny_artifact)
    calibration = calibrate(loaded, select_rows(synth_manifest, "val"))
    assert calibration.temperature > 0 and 0 < calibration.threshold <= 1
    result = evaluate(loaded, select_rows(synth_manifest, "test"), calibration=calibration)
    assert len(result.per_generator) == 8 and result.per_generator.loc["all", "n"] == len(result.predictions)
    assert list(result.robustness.columns) == ["clean", *ROBUSTNESS]
    report = write_evaluation(result, tmp_path / "eval")
    text = report.read_text()
    assert "## Per generator" in text and "## Robustness" in text and "## Calibration" in text
    for name in ("confusion.png", "roc.png", "per_generator.csv", "robustness.csv", "metrics.json"):
        assert (tmp_path / "eval" / name).exists()
    wrong = ((result.predictions["prob"] >= result.threshold) != result.predictions["target"]).sum()
    assert wrong > 0, "an untrained model makes mistakes"
    assert (tmp_path / "eval" / "errors.png").exists() and "most confident mistakes" in text


def test_evaluate_command_prints_the_table(synth_manifest: Path, tiny_artifact: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["evaluate", str(tiny_artifact), "--data", str(synth_manifest), "--calibrate-on", "val",
         "--no-robustness", "--out", str(tmp_path / "r")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "imagenet_midjourney" in result.output and "threshold" in result.output
    assert (tmp_path / "r" / "evaluation.md").exists()


def test_evaluate_command_fails_clearly(synth_manifest: Path, tiny_artifact: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["evaluate", str(tmp_path / "nope"), "--data", str(synth_manifest)])
    assert missing.exit_code == 2 and "no genart artefact" in missing.output
    assert runner.invoke(app, ["evaluate", "--data", str(synth_manifest)]).exit_code == 2
    same = runner.invoke(
        app,
        [
            "evaluate",
            str(tiny_artifact),
            "--data",
            str(synth_manifest),
            "--split",
            "val",
            "--calibrate-on",
            "val",
        ],
    )
    assert same.exit_code == 2 and "flatters" in same.output
    bad = runner.invoke(app, ["evaluate", "x", "--data", str(synth_manifest), "--protocol", "magic"])
    assert bad.exit_code == 2 and "unknown protocol" in bad.output


def test_calibrate_on_refits_the_threshold_by_the_rule_the_artefact_was_trained_with(
    synth_manifest: Path, tmp_path: Path
) -> None:
    from genart.evaluate.evaluation import evaluate_artifact
    from tests.conftest import untrained_artifact

    max_fpr = 0.05
    artifact = untrained_artifact(
        tmp_path, "tiny", "tiny", seed=0, threshold=0.5, input_size=48,
        train_config={"train": {"threshold_max_fpr": max_fpr}},
    )  # fmt: skip
    val = select_rows(synth_manifest, "val")
    by_rule = calibrate(load_artifact(artifact), val, max_fpr=max_fpr)
    youden = calibrate(load_artifact(artifact), val)
    assert by_rule.threshold != youden.threshold  # else this test could not tell the rules apart
    result, _ = evaluate_artifact(artifact, synth_manifest, "test", "val", (), tmp_path / "r")
    assert result.threshold == result.calibration.threshold == by_rule.threshold
