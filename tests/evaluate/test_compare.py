from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from genart.cli import app
from genart.models.artifact import ArtifactMeta, save_artifact
from genart.models.zoo import build_model, get_entry


def test_compare_writes_a_report_with_plots_and_a_decision(synth_manifest: Path, tmp_path: Path) -> None:
    artifacts = []
    for seed, name in enumerate(["tiny", "tiny_residual", "tiny"]):
        torch.manual_seed(seed)
        model, spec = build_model(name, pretrained=False, input_size=48)
        entry = get_entry(name)
        meta = ArtifactMeta(name=name, timm_id=entry.timm_id, residual=entry.residual, input=spec.to_dict())
        artifacts.append(str(save_artifact(model, meta, tmp_path / f"{name}{seed}")))
    result = CliRunner().invoke(
        app, ["compare", *artifacts, "--data", str(synth_manifest), "--out", str(tmp_path / "cmp")]
    )
    assert result.exit_code == 0, result.output
    text = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "## Decision" in text and "Best single model" in text and "tiny#0" in text and "tiny#2" in text
    for png in ("roc.png", "confusion.png", "by_generator.png"):
        assert (tmp_path / "cmp" / png).stat().st_size > 10_000
    assert "ms_b32" in text and "acc_jpeg75" in text and "logged to MLflow run" in result.output


def test_verdict_agreement_between_the_api_and_an_evaluation_report(tmp_path: Path) -> None:
    import json

    from genart.evaluate.compare import verdict_agreement

    images = [tmp_path / f"{i}.png" for i in range(4)]
    pd.DataFrame({"path": [str(p) for p in images], "prob": [0.9, 0.2, 0.55, 0.7]}).to_parquet(
        tmp_path / "predictions.parquet"
    )
    (tmp_path / "metrics.json").write_text(json.dumps({"threshold": 0.6}))
    rows = [
        {"input": str(images[0]), "label": "ai", "probability": 0.9001, "error": None},
        {"input": str(images[1]), "label": "nature", "probability": 0.2, "error": None},
        {"input": str(images[2]), "label": "ai", "probability": 0.61, "error": None},  # evaluate: 0.55 < 0.6
        {"input": str(tmp_path / "other.png"), "label": "ai", "probability": 0.9, "error": None},
        {"input": str(images[3]), "label": None, "probability": None, "error": "timeout"},
    ]
    result = verdict_agreement(rows, tmp_path)
    assert (result.compared, result.agree, result.missing) == (3, 2, 1)
    assert abs(result.max_abs_diff - 0.06) < 1e-9
    assert len(result.disagreements) == 1 and "2.png: API ai" in result.disagreements[0]
    with pytest.raises(FileNotFoundError, match="not a `genart evaluate` report"):
        verdict_agreement(rows, tmp_path / "nowhere")
