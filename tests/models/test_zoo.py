from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from genart.data.transforms import eval_transform
from genart.models.artifact import ArtifactMeta, load_artifact, read_meta, save_artifact
from genart.models.zoo import (
    ZOO,
    PretrainedWeightsUnavailable,
    ResidualDetector,
    build_model,
    get_entry,
    load_lite0_package_weights,
)

HUB_MODELS = [name for name, entry in ZOO.items() if entry.weights == "hub"]


TIMM_MODELS = [name for name, entry in ZOO.items() if entry.kind == "timm"]


def test_frozen_encoder_models_are_not_built_as_networks() -> None:
    with pytest.raises(ValueError, match="frozen-encoder"):
        build_model("clip_b16", pretrained=False)


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_every_zoo_model_builds_runs_and_round_trips_through_an_artefact(name: str, tmp_path: Path) -> None:
    model, spec = build_model(name, pretrained=False)
    model.eval()
    x = torch.randn(2, 3, spec.input_size, spec.input_size)
    with torch.inference_mode():
        out = model(x)
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    entry = get_entry(name)
    meta = ArtifactMeta(
        name=name, timm_id=entry.timm_id, residual=entry.residual, input=spec.to_dict(), threshold=0.4
    )
    save_artifact(model, meta, tmp_path / name)
    assert (tmp_path / name / "model.safetensors").stat().st_mode & 0o044 == 0o044  # others may read it
    loaded = load_artifact(tmp_path / name)
    assert loaded.spec == spec and loaded.meta.threshold == 0.4
    with torch.inference_mode():
        assert torch.allclose(loaded.model(x), out, atol=1e-5)
    assert isinstance(loaded.model, ResidualDetector) == entry.residual


def test_the_configs_canonical_jpeg_goes_into_the_input_spec() -> None:
    from genart.config import ModelConfig
    from genart.models.zoo import build_from_config

    assert build_model("tiny", pretrained=False)[1].jpeg_quality is None
    _, spec = build_from_config(ModelConfig(name="tiny", pretrained=False, canonical_jpeg=85, input_size=48))
    assert spec.jpeg_quality == 85 and spec.input_size == 48
    with pytest.raises(ValueError, match="less than or equal to 100"):
        ModelConfig(name="tiny", canonical_jpeg=101)


def test_one_input_spec_rule_for_timm_and_frozen_encoder_models() -> None:
    from genart.config import ModelConfig
    from genart.models.clip import CLIP_SPEC
    from genart.models.zoo import build_from_config, input_spec

    tiny = ModelConfig(name="tiny", pretrained=False, canonical_jpeg=80, input_size=40, crop_policy="crop")
    spec = input_spec(tiny)
    assert spec == build_from_config(tiny)[1]
    assert spec.crop_policy == "crop" and spec.jpeg_quality == 80
    clip = input_spec(ModelConfig(name="clip_b16", canonical_jpeg=90))
    assert clip.mean == CLIP_SPEC.mean and clip.crop_pct == 1.0 and clip.jpeg_quality == 90
    assert input_spec(ModelConfig(name="clip_b16")) == CLIP_SPEC


@pytest.mark.slow
def test_lite0_package_weights_recognise_imagenet_classes() -> None:
    import timm
    from skimage import data

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    load_lite0_package_weights(model)
    model.eval()
    _, spec = build_model("lite0", pretrained=False)
    transform = eval_transform(spec)
    with torch.inference_mode():
        coffee = model(transform(Image.fromarray(data.coffee()))[None]).softmax(-1)[0]
        cat = model(transform(Image.fromarray(data.chelsea()))[None]).softmax(-1)[0]
    assert coffee.argmax().item() == 967 and coffee.max() > 0.5  # ImageNet 967: espresso
    assert cat.argmax().item() in {281, 282, 285}  # tabby, tiger cat, Egyptian cat


def test_lite0_builds_with_pretrained_weights_and_a_fresh_two_class_head() -> None:
    model, spec = build_model("lite0", pretrained=True)
    assert model.get_classifier().out_features == 2
    assert spec.mean == (0.5, 0.5, 0.5) and spec.input_size == 224
    reference, _ = build_model("lite0", pretrained=False)
    assert not torch.equal(model.conv_stem.weight, reference.conv_stem.weight)


@pytest.mark.parametrize("name", HUB_MODELS)
def test_hub_models_fail_clearly_when_the_hub_is_unreachable(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("genart.models.zoo._hub_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(PretrainedWeightsUnavailable, match=r"--weights PATH.*--no-pretrained"):
        build_model(name, pretrained=True)


def test_weights_file_loads_a_local_checkpoint(tmp_path: Path) -> None:
    source, _ = build_model("tiny", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model, _ = build_model("tiny", weights=tmp_path / "w.pth")
    assert torch.equal(model.conv_stem.weight, source.conv_stem.weight)
    with pytest.raises(PretrainedWeightsUnavailable, match="does not exist"):
        build_model("tiny", weights=tmp_path / "missing.pth")
    other, _ = build_model("tiny_vit", pretrained=False)
    torch.save(other.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(PretrainedWeightsUnavailable, match="matches only"):
        build_model("tiny", weights=tmp_path / "vit.pth")


def test_unknown_model_names_list_the_zoo() -> None:
    with pytest.raises(ValueError, match="residual"):
        get_entry("resnet9000")


def test_residual_removes_content_and_keeps_pixel_texture() -> None:
    flat_blocks = torch.arange(16.0).reshape(1, 1, 4, 4).repeat_interleave(2, 2).repeat_interleave(2, 3)
    assert torch.count_nonzero(ResidualDetector.residual(flat_blocks)) == 0  # 2x2-constant content cancels
    checker = torch.tensor(np.indices((8, 8)).sum(0) % 2, dtype=torch.float32)[None, None]
    assert torch.count_nonzero(ResidualDetector.residual(checker)) == 32  # period-2 texture survives


@pytest.mark.parametrize("factor", [2, 3])
@pytest.mark.parametrize("size", [(64, 64), (65, 63), (7, 10)])
def test_residual_down_sampling_is_the_nearest_interpolation_as_a_strided_slice(size, factor: int) -> None:
    x = torch.randn(2, 3, *size)
    small = F.interpolate(x, scale_factor=1 / factor, mode="nearest")
    expected = x - F.interpolate(small, size=size, mode="nearest")
    assert torch.equal(ResidualDetector.residual(x, factor), expected)


def test_artefact_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no genart artefact"):
        load_artifact(tmp_path)
    model, spec = build_model("tiny", pretrained=False)
    meta = ArtifactMeta(name="tiny", timm_id="test_efficientnet", input=spec.to_dict(), format_version=99)
    save_artifact(model, meta, tmp_path / "future")
    assert read_meta(tmp_path / "future").format_version == 99
    with pytest.raises(ValueError, match="newer"):
        load_artifact(tmp_path / "future")
