import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from typer.testing import CliRunner

from genart.cli import app
from genart.models.artifact import ArtifactMeta, save_artifact
from genart.models.ensemble import EnsembleSpec, load_ensemble, save_ensemble
from genart.models.zoo import build_model, get_entry


def _members(tmp_path: Path) -> list[str]:
    """Two untrained member artefacts: a tiny EfficientNet and a tiny residual detector."""
    members = []
    for seed, name in enumerate(["tiny", "tiny_residual"]):
        torch.manual_seed(seed)
        model, spec = build_model(name, pretrained=False, input_size=48)
        entry = get_entry(name)
        meta = ArtifactMeta(name=name, timm_id=entry.timm_id, residual=entry.residual, input=spec.to_dict())
        members.append(str(save_artifact(model, meta, tmp_path / name)))
    return members


def test_ensemble_command_builds_and_compares(synth_manifest: Path, tmp_path: Path) -> None:
    members = _members(tmp_path)
    result = CliRunner().invoke(
        app,
        ["ensemble", "--members", *members, "--data", str(synth_manifest), "--rule", "weighted",
         "--out", str(tmp_path / "ens")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    spec = load_ensemble(tmp_path / "ens")
    assert spec.members == members and spec.rule == "weighted" and len(spec.weights) == 2
    assert 0 <= spec.metrics["val_ece"] <= 1
    table = pd.read_csv(tmp_path / "ens" / "accuracy_by_generator.csv", index_col=0)
    assert list(table.columns) == ["tiny", "tiny_residual", "ensemble"] and "all" in table.index
    assert "the best member's" in result.output


def test_ensemble_members_can_be_given_comma_separated(synth_manifest: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["ensemble", f"{tmp_path / 'a'},{tmp_path / 'b'}", "--data", str(synth_manifest)]
    )
    assert result.exit_code == 2 and "no genart artefact" in result.output  # both names were read as members


def test_an_ensemble_evaluates_like_one_model(synth_manifest: Path, tmp_path: Path) -> None:
    members = _members(tmp_path)
    spec = EnsembleSpec(
        members=members, rule="weighted", weights=[0.75, 0.25], threshold=0.4, metrics={"val_ece": 0.05}
    )
    save_ensemble(spec, tmp_path / "ens")
    runner = CliRunner()
    out = tmp_path / "eval"
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(tmp_path / "ens"),
            "--data",
            str(synth_manifest),
            "--no-robustness",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    preds = pd.read_parquet(out / "predictions.parquet")
    single = [
        pd.read_parquet(out / "predictions.parquet")[c] for c in ("prob_0_tiny", "prob_1_tiny_residual")
    ]
    np.testing.assert_allclose(preds["prob"], 0.75 * single[0] + 0.25 * single[1], rtol=1e-6)
    assert ((preds["prob"] >= 0.4) == (preds["pred_class"] == "ai")).all()
    alone = runner.invoke(
        app,
        [
            "evaluate",
            members[0],
            "--data",
            str(synth_manifest),
            "--no-robustness",
            "--out",
            str(tmp_path / "m"),
        ],
    )
    assert alone.exit_code == 0, alone.output
    np.testing.assert_allclose(
        pd.read_parquet(tmp_path / "m" / "predictions.parquet")["prob"], single[0], rtol=1e-6
    )
    recorded = json.loads((out / "metrics.json").read_text())
    assert recorded["threshold"] == 0.4 and recorded["calibration"]["ece_after"] == 0.05
    refit = runner.invoke(
        app, ["evaluate", str(tmp_path / "ens"), "--data", str(synth_manifest), "--calibrate-on", "val"]
    )
    assert refit.exit_code == 2 and "drop --calibrate-on" in refit.output


def test_ensemble_threshold_at_a_validation_false_positive_rate(synth_manifest: Path, tmp_path: Path) -> None:
    from genart.data.pipeline import select_rows
    from genart.models.artifact import load_artifact
    from genart.models.ensemble import combine
    from genart.models.predict import predict_rows

    members = _members(tmp_path)
    result = CliRunner().invoke(
        app,
        [
            "ensemble",
            *members,
            "--data",
            str(synth_manifest),
            "--max-fpr",
            "0.05",
            "--out",
            str(tmp_path / "e"),
        ],
    )
    assert result.exit_code == 0, result.output
    spec = load_ensemble(tmp_path / "e")
    assert spec.threshold_max_fpr == 0.05  # the artefact says how its threshold was chosen
    preds = [predict_rows(load_artifact(m), select_rows(synth_manifest, "val")) for m in members]
    p = combine(
        np.stack([f["prob"].to_numpy() for f in preds]), spec.rule, spec.weights, spec.member_thresholds
    )
    real = preds[0]["target"].to_numpy() == 0
    assert (p[real] >= spec.threshold).mean() <= 0.05
