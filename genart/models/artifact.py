"""Self-describing model artefacts: ``model.safetensors`` + ``genart.json``, from a path or an MLflow URI.

An artefact carries everything needed to use it: the architecture (zoo name and timm id), the classes,
the input policy, the decision threshold and calibration temperature chosen on validation data, a
fingerprint of the manifest it was trained on, its metrics, and the genart version that wrote it. Serving,
evaluation and export need nothing but its location.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

import genart
from genart.data.layout import CLASSES
from genart.data.transforms import InputSpec, eval_transform, normalize
from genart.models.predict import ai_probability

__all__ = [
    "META_FILE",
    "NETWORK_LOADERS",
    "WEIGHTS_FILE",
    "ArtifactMeta",
    "LoadedModel",
    "load_artifact",
    "manifest_fingerprint",
    "read_meta",
    "record_metrics",
    "resolve_uri",
    "save_artifact",
    "split_fingerprint",
]

META_FILE = "genart.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


class ArtifactMeta(BaseModel):
    """The contents of ``genart.json``."""

    model_config = ConfigDict(extra="allow")

    format_version: int = FORMAT_VERSION
    kind: str = Field("timm", description="which loader in NETWORK_LOADERS builds the network")
    name: str = Field(description="zoo name, e.g. 'residual' or 'lite0'")
    timm_id: str
    residual: bool = False
    classes: list[str] = Field(
        default_factory=lambda: list(CLASSES),
        description="class 0 is always nature; more than 2: attribution",
    )
    input: dict[str, Any] = Field(description="InputSpec: size, mean, std, crop policy")
    threshold: float = Field(0.5, description="P(ai) at or above which the label is 'ai'")
    temperature: float = Field(1.0, gt=0, description="logits are divided by this before the softmax")
    data_fingerprint: str | None = None
    generators: list[str] = Field(default_factory=list, description="generators seen in training")
    trained_on: dict[str, Any] = Field(
        default_factory=dict, description="data name, image count, families, whether generated sample data"
    )
    encoder: dict[str, Any] | None = Field(None, description="frozen-encoder kinds: file, sha256, taps")
    metrics: dict[str, Any] = Field(default_factory=dict)
    train_config: dict[str, Any] = Field(default_factory=dict)
    genart_version: str = genart.__version__
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    version: str | None = Field(None, description="registry version, when loaded from MLflow")

    @property
    def spec(self) -> InputSpec:
        return InputSpec.from_dict(self.input)


@dataclass
class LoadedModel:
    """A model ready for inference, with its metadata and the one eval transform for its input."""

    model: nn.Module
    meta: ArtifactMeta
    spec: InputSpec
    transform: Any
    source: str

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a batch (N, 3, H, W) of this model's eval transform: normalised float32, or the uint8
        images of a transform built with ``as_uint8=True`` (what serving hands over: a quarter of the
        bytes), normalised here on the model's device by :func:`~genart.data.transforms.normalize`."""
        device = next(self.model.parameters()).device
        images = images.to(device)
        if images.dtype == torch.uint8:
            images = normalize(images, self.spec)
        return self.model(images).float().cpu()

    def predict_proba(self, images: torch.Tensor) -> np.ndarray:
        """Calibrated P(ai) = 1 - P(nature) for a batch of transformed images (N, 3, H, W)."""
        return ai_probability(self.logits(images), self.meta.temperature)


def manifest_fingerprint(rows: pd.DataFrame) -> str:
    """A short hash of which files (by sha256) were in which split: same data, same fingerprint."""
    cols = [c for c in ("sha256", "split", "label") if c in rows]
    keys = sorted("|".join(str(v) for v in t) for t in rows[cols].itertuples(index=False))
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def split_fingerprint(rows: dict[str, pd.DataFrame]) -> str:
    """The :func:`manifest_fingerprint` of the rows a model was fitted on, by split (``{"train": ...,
    "val": ...}``, as :func:`genart.data.pipeline.select_rows` gives them, each marked with its split)."""
    return manifest_fingerprint(pd.concat([part.assign(split=split) for split, part in rows.items()]))


def save_artifact(model: nn.Module, meta: ArtifactMeta, path: str | Path) -> Path:
    """Write ``model.safetensors`` and ``genart.json`` into the directory ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    module = getattr(model, "module", model)  # unwrap DistributedDataParallel
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path / WEIGHTS_FILE))
    # safetensors writes 0600: make it readable like genart.json, so a container's non-root user can serve it
    (path / WEIGHTS_FILE).chmod(0o644)
    (path / META_FILE).write_text(meta.model_dump_json(indent=2))
    return path


def resolve_uri(path_or_uri: str | Path) -> Path:
    """A local directory for a path, ``file://``, or an MLflow ``models:/`` / ``runs:/`` URI."""
    text = str(path_or_uri)
    if text.startswith(("models:/", "runs:/", "mlflow-artifacts:/")):
        import mlflow

        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=text))
        if not (local / META_FILE).exists():
            found = sorted(local.rglob(META_FILE))
            if not found:
                raise FileNotFoundError(f"{text} holds no {META_FILE}: is it a genart artefact?")
            local = found[0].parent
        return local
    local = Path(text.removeprefix("file://"))
    if not (local / META_FILE).exists():
        raise FileNotFoundError(f"no genart artefact at {text}: expected {local / META_FILE}")
    return local


def record_metrics(path: str | Path, metrics: dict[str, Any]) -> ArtifactMeta:
    """Add ``metrics`` to a local artefact's ``genart.json`` (e.g. a protocol's summary); returns the meta."""
    meta = read_meta(path)
    meta.metrics = {**meta.metrics, **metrics}
    (Path(path) / META_FILE).write_text(meta.model_dump_json(indent=2))
    return meta


def read_meta(path_or_uri: str | Path) -> ArtifactMeta:
    """The metadata of an artefact, without loading its weights."""
    return ArtifactMeta.model_validate(json.loads((resolve_uri(path_or_uri) / META_FILE).read_text()))


def _load_timm(meta: ArtifactMeta, local: Path) -> nn.Module:
    """A timm network (wrapped in the residual front end when ``meta.residual``) with the saved weights."""
    import timm

    from genart.models.zoo import ResidualDetector

    model: nn.Module = timm.create_model(meta.timm_id, pretrained=False, num_classes=len(meta.classes))
    if meta.residual:
        model = ResidualDetector(model)
    model.load_state_dict(load_file(str(local / WEIGHTS_FILE)))
    return model


# An artefact's ``kind`` -> the function that builds its network from (meta, local directory). A new kind
# of model registers its loader here; everything after the network (transform, P(ai), label) is shared.
def _load_clip(meta: ArtifactMeta, local: Path) -> nn.Module:
    """A frozen CLIP encoder (found by its sha256) with the saved head."""
    from genart.models.clip import load_clip

    return load_clip(meta, local)


NETWORK_LOADERS: dict[str, Callable[[ArtifactMeta, Path], nn.Module]] = {
    "timm": _load_timm,
    "clip": _load_clip,
}


def load_artifact(path_or_uri: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load an artefact: a ready ``eval()`` model plus its transform from :mod:`genart.data.transforms`."""
    local = resolve_uri(path_or_uri)
    meta = ArtifactMeta.model_validate(json.loads((local / META_FILE).read_text()))
    if meta.format_version > FORMAT_VERSION:
        raise ValueError(f"artefact format {meta.format_version} is newer than this genart understands")
    loader = NETWORK_LOADERS.get(meta.kind)
    if loader is None:
        raise ValueError(
            f"artefact {path_or_uri} is of kind {meta.kind!r}, which this genart cannot load "
            f"(known: {sorted(NETWORK_LOADERS)}); upgrade genart"
        )
    model = loader(meta, local)
    model.to(device).eval()
    spec = meta.spec
    return LoadedModel(
        model=model, meta=meta, spec=spec, transform=eval_transform(spec), source=str(path_or_uri)
    )
