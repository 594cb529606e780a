import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from genart.cli import app
from genart.evaluate.ensemble import EnsembleSpec, combine, fit_weights, load_ensemble, save_ensemble
from genart.models.artifact import ArtifactMeta, save_artifact
from genart.models.zoo import build_model, get_entry


def test_mean_weighted_and_vote_rules() -> None:
    probs = np.array([[0.9, 0.2, 0.6], [0.5, 0.4, 0.1]])
    np.testing.assert_allclose(combine(probs, "mean"), [0.7, 0.3, 0.35])
    np.testing.assert_allclose(combine(probs, "weighted", [3, 1]), [0.8, 0.25, 0.475])
    np.testing.assert_allclose(combine(probs, "vote", member_thresholds=[0.5, 0.45]), [1.0, 0.0, 0.5])
    with pytest.raises(ValueError, match="positive sum"):
        combine(probs, "weighted", [0, 0])
    with pytest.raises(ValueError, match="unknown ensemble rule"):
        combine(probs, "median")  # type: ignore[arg-type]


def test_fitted_weights_favour_the_informative_member() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = np.clip(y * 0.8 + 0.1 + rng.normal(0, 0.05, 400), 0, 1)
    noise = rng.uniform(0, 1, 400)
    weights = fit_weights(np.stack([good, noise]), y)
    assert weights[0] > 0.8 and abs(sum(weights) - 1) < 1e-6


def test_ensemble_spec_checks_lengths() -> None:
    with pytest.raises(ValueError, match="weights has 1 entries for 2 members"):
        EnsembleSpec(members=["a", "b"], weights=[1.0])


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


def test_the_serving_ingress_takes_its_defaults_from_an_ensemble_artefact(tmp_path: Path) -> None:
    from genart.serve.api import ensemble_defaults

    save_ensemble(
        EnsembleSpec(members=["a", "b"], rule="weighted", weights=[0.7, 0.3], threshold=0.42), tmp_path / "e"
    )
    assert ensemble_defaults(str(tmp_path / "e"), ["lite0", "residual"]) == {
        "rule": "weighted",
        "threshold": 0.42,
        "weights": {"lite0": 0.7, "residual": 0.3},
    }
    assert ensemble_defaults(f"file://{tmp_path / 'e'}", ["x", "y"])["threshold"] == 0.42
    with pytest.raises(ValueError, match=r"has 2 members .* serves 1 models"):
        ensemble_defaults(str(tmp_path / "e"), ["lite0"])
    with pytest.raises(FileNotFoundError, match="no ensemble at"):
        ensemble_defaults(str(tmp_path / "missing"), ["lite0", "residual"])
