from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from genart.cli import app
from genart.evaluate.ensemble import EnsembleSpec, combine, fit_weights, load_ensemble
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


def test_ensemble_command_builds_and_compares(synth_manifest: Path, tmp_path: Path) -> None:
    members = []
    for seed, name in enumerate(["tiny", "tiny_residual"]):
        torch.manual_seed(seed)
        model, spec = build_model(name, pretrained=False, input_size=48)
        entry = get_entry(name)
        meta = ArtifactMeta(name=name, timm_id=entry.timm_id, residual=entry.residual, input=spec.to_dict())
        members.append(str(save_artifact(model, meta, tmp_path / name)))
    result = CliRunner().invoke(
        app,
        ["ensemble", "--members", *members, "--data", str(synth_manifest), "--rule", "weighted",
         "--out", str(tmp_path / "ens")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    spec = load_ensemble(tmp_path / "ens")
    assert spec.members == members and spec.rule == "weighted" and len(spec.weights) == 2
    table = pd.read_csv(tmp_path / "ens" / "accuracy_by_generator.csv", index_col=0)
    assert list(table.columns) == ["tiny", "tiny_residual", "ensemble"] and "all" in table.index
    assert "the best member's" in result.output


def test_ensemble_members_can_be_given_comma_separated(synth_manifest: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["ensemble", f"{tmp_path / 'a'},{tmp_path / 'b'}", "--data", str(synth_manifest)]
    )
    assert result.exit_code == 2 and "no genart artefact" in result.output  # both names were read as members
