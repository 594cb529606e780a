"""TFLite export: needs the genart[edge] extra, so `make test-edge` runs this file in .venv-edge."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("litert_torch", reason="genart[edge] is not installed here: `make test-edge` runs these")

from genart.cli import app
from genart.models.artifact import ArtifactMeta, load_artifact, save_artifact
from genart.models.export import export_artifact, run_tflite
from genart.models.zoo import build_model, get_entry


def _artifact(tmp_path: Path, name: str, logit_scale: float = 1.0) -> Path:
    torch.manual_seed(0)
    model, spec = build_model(name, pretrained=False)
    if logit_scale != 1.0:  # a confident model: few test images near the threshold
        with torch.no_grad():
            model.get_classifier().weight.mul_(logit_scale)
    entry = get_entry(name)
    meta = ArtifactMeta(
        name=name, timm_id=entry.timm_id, residual=entry.residual, input=spec.to_dict(), temperature=1.5
    )
    return save_artifact(model, meta, tmp_path / name)


@pytest.mark.parametrize("name", ["tiny", "tiny_residual"])
def test_tflite_export_matches_pytorch_on_the_test_split(
    tmp_path: Path, synth_manifest: Path, name: str
) -> None:
    result = export_artifact(_artifact(tmp_path, name), "tflite", data=synth_manifest, threads=1)
    assert result.max_abs_diff < 1e-4 and result.source == f"test split of {synth_manifest}"
    assert result.path.name == "model.tflite" and result.size_bytes == result.path.stat().st_size > 0
    assert json.loads((result.path.parent / "genart.json").read_text())["name"] == name
    assert set(result.speed) == {"PyTorch", "ONNX Runtime", "TFLite"} and min(result.speed.values()) > 0
    # The file runs on its own: same logits as PyTorch through the interpreter.
    loaded = load_artifact(tmp_path / name)
    x = torch.randn(3, 3, loaded.spec.input_size, loaded.spec.input_size)
    with torch.inference_mode():
        assert torch.allclose(torch.from_numpy(run_tflite(result.path, x)), loaded.model(x), atol=1e-4)


def test_int8_export_states_what_it_costs_on_the_test_split(tmp_path: Path, synth_manifest: Path) -> None:
    result = export_artifact(
        _artifact(tmp_path, "tiny", logit_scale=20.0), "tflite", data=synth_manifest, int8=True, threads=1
    )
    q = result.int8
    assert q is not None and q.path.exists() and q.size_bytes < result.size_bytes
    assert q.calibration_images > 0 and 0 < q.mean_abs_diff <= q.max_abs_diff
    assert q.accuracy >= q.float_accuracy - q.tolerance
    assert "TFLite int8" in result.speed
    report = json.loads((result.path.parent / "parity.json").read_text())
    assert report["int8"]["accuracy"] == q.accuracy and report["int8"]["tolerance"] == 0.03


def test_a_model_litert_cannot_lower_is_refused_with_the_op(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"tiny_vit does not convert to TFLite: .*upsample_bicubic2d_aa"):
        export_artifact(_artifact(tmp_path, "tiny_vit"), "tflite", images=4)


def test_export_command_prints_parity_size_and_the_speed_table(tmp_path: Path, synth_manifest: Path) -> None:
    artifact = _artifact(tmp_path, "tiny", logit_scale=20.0)
    args = ["export", str(artifact), "--format", "tflite", "--int8", "--data", str(synth_manifest)]
    out = CliRunner().invoke(app, [*args, "--threads", "1"])
    assert out.exit_code == 0, out.output
    assert "< 1e-4" in out.output and " MB" in out.output and "test accuracy" in out.output
    for runtime in ("PyTorch", "ONNX Runtime", "TFLite", "TFLite int8"):
        assert f"| {runtime}" in out.output
