import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from genart.cli import app
from genart.models.artifact import ArtifactMeta, save_artifact
from genart.models.export import export_artifact, parity_images
from genart.models.zoo import build_model, get_entry


def _artifact(tmp_path: Path, name: str) -> Path:
    torch.manual_seed(0)
    model, spec = build_model(name, pretrained=False)
    entry = get_entry(name)
    meta = ArtifactMeta(
        name=name, timm_id=entry.timm_id, residual=entry.residual, input=spec.to_dict(), temperature=1.5
    )
    return save_artifact(model, meta, tmp_path / name)


@pytest.mark.parametrize("name", ["tiny", "tiny_residual", "tiny_vit"])
def test_onnx_export_matches_pytorch_and_carries_its_metadata(tmp_path: Path, name: str) -> None:
    artifact = _artifact(tmp_path, name)
    result = export_artifact(artifact, "onnx", images=32)
    assert result.max_abs_diff < 1e-4 and result.path.exists()
    model = onnx.load(str(result.path))
    meta = json.loads({p.key: p.value for p in model.metadata_props}["genart"])
    assert meta["name"] == name and meta["temperature"] == 1.5
    # The batch axis is dynamic: any batch size runs.
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    size = meta["input"]["input_size"]
    for batch in (1, 5):
        (logits,) = session.run(None, {"image": np.zeros((batch, 3, size, size), np.float32)})
        assert logits.shape == (batch, 2)


def test_torchscript_export_round_trips(tmp_path: Path) -> None:
    result = export_artifact(_artifact(tmp_path, "tiny"), "torchscript", out=tmp_path / "ts")
    extra = {"genart.json": ""}
    loaded = torch.jit.load(str(result.path), _extra_files=extra)
    assert json.loads(extra["genart.json"])["name"] == "tiny"
    assert loaded(torch.zeros(3, 3, 64, 64)).shape == (3, 2)


def test_parity_images_are_transformed_crops(tmp_path: Path) -> None:
    from genart.models.artifact import load_artifact

    images = parity_images(load_artifact(_artifact(tmp_path, "tiny")), count=4)
    assert images.shape == (4, 3, 64, 64) and images.std() > 0.1


def test_export_command_reports_parity_and_refuses_unknown_formats(tmp_path: Path) -> None:
    artifact = _artifact(tmp_path, "tiny")
    ok = CliRunner().invoke(app, ["export", str(artifact), "--format", "onnx", "--images", "8"])
    assert ok.exit_code == 0 and "< 1e-4" in ok.output
    bad = CliRunner().invoke(app, ["export", str(artifact), "--format", "coreml"])
    assert bad.exit_code == 2 and "unknown export format" in bad.output


def test_onnx_parity_runs_on_the_manifest_test_split(tmp_path: Path, synth_manifest: Path) -> None:
    result = export_artifact(_artifact(tmp_path, "tiny"), "onnx", images=8, data=synth_manifest)
    assert result.images == 8 and result.source == f"test split of {synth_manifest}"
    report = json.loads((result.path.parent / "parity.json").read_text())
    assert report["source"] == result.source and report["max_abs_diff_probability"] < 1e-4


def test_tflite_without_the_edge_extra_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # import fails as if not installed
    out = CliRunner().invoke(app, ["export", str(_artifact(tmp_path, "tiny")), "--format", "tflite"])
    assert out.exit_code == 2 and "make install-edge" in out.output and "genart[edge]" in out.output
    assert not (tmp_path / "tiny" / "export").exists()  # refused before any work


def test_int8_is_refused_for_other_formats(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--int8 is for --format tflite"):
        export_artifact(_artifact(tmp_path, "tiny"), "onnx", int8=True)


def test_a_frozen_encoder_model_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from genart.models.artifact import NETWORK_LOADERS, read_meta

    artifact = _artifact(tmp_path, "tiny")
    meta = read_meta(artifact).model_copy(update={"kind": "frozen"})
    (artifact / "genart.json").write_text(meta.model_dump_json())
    monkeypatch.setitem(NETWORK_LOADERS, "frozen", NETWORK_LOADERS["timm"])
    with pytest.raises(ValueError, match=r"'frozen' model .* not one PyTorch network"):
        export_artifact(artifact, "onnx")
