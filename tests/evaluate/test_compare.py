from pathlib import Path

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
