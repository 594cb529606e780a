"""Export an artefact to ONNX or TorchScript, with a numeric parity check against PyTorch.

The exported graph maps a normalised image batch ``(N, 3, H, W)`` to logits, with a dynamic batch axis.
Everything else a caller needs (input size, mean/std, crop policy, temperature, threshold, classes) travels
inside the file: as ONNX metadata (``genart`` key) or as a TorchScript extra file (``genart.json``), and as
a ``genart.json`` beside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from genart.models.artifact import META_FILE, LoadedModel, load_artifact

__all__ = ["ExportResult", "ParityError", "export_artifact", "parity_images"]

ExportFormat = Literal["onnx", "torchscript"]
PARITY_TOLERANCE = 1e-4


class ParityError(RuntimeError):
    """The exported model's probabilities differ from PyTorch's by more than the tolerance."""


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float
    images: int


def parity_images(loaded: LoadedModel, count: int = 32, seed: int = 0) -> torch.Tensor:
    """``count`` realistic inputs: photo crops and generator imitations (sample-data code), transformed."""
    from genart.data.layout import GENIMAGE_GENERATORS
    from genart.data.synth import apply_family, nature_crop

    rng = np.random.default_rng(seed)
    size = max(64, loaded.spec.input_size)
    images = []
    for i in range(count):
        crop = nature_crop(size, rng)
        if i % 2:
            crop = apply_family(GENIMAGE_GENERATORS[i % len(GENIMAGE_GENERATORS)], crop, rng)
        images.append(loaded.transform(Image.fromarray(crop)))
    return torch.stack(images)


def _probs(logits: np.ndarray, temperature: float) -> np.ndarray:
    return torch.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float32)) / temperature, dim=1).numpy()


def _export_onnx(loaded: LoadedModel, example: torch.Tensor, path: Path, meta_json: str) -> None:
    import onnx

    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(
        loaded.model,
        (example,),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        dynamo=True,
        verbose=False,
    )
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "genart", meta_json
    onnx.save(model, str(path))


def _run_onnx(path: Path, images: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": images.numpy()})[0]


def export_artifact(
    artifact: str | Path,
    fmt: ExportFormat = "onnx",
    out: str | Path | None = None,
    images: int = 32,
    tolerance: float = PARITY_TOLERANCE,
) -> ExportResult:
    """Export ``artifact`` and check it: max |P_exported - P_torch| over ``images`` inputs < ``tolerance``."""
    if fmt not in ("onnx", "torchscript"):
        raise ValueError(f"unknown export format {fmt!r}: use onnx or torchscript")
    loaded = load_artifact(artifact)
    is_uri = str(artifact).startswith(("models:/", "runs:/", "mlflow-artifacts:/"))
    default = Path("exports") / loaded.meta.name if is_uri else Path(loaded.source) / "export"
    out_dir = Path(out) if out else default
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_json = loaded.meta.model_dump_json(indent=2)
    (out_dir / META_FILE).write_text(meta_json)
    batch = parity_images(loaded, images)
    with torch.inference_mode():
        reference = loaded.model(batch).numpy()
    example = batch[:2]
    if fmt == "onnx":
        path = out_dir / "model.onnx"
        _export_onnx(loaded, example, path, meta_json)
        exported = _run_onnx(path, batch)
    else:
        path = out_dir / "model.torchscript.pt"
        with torch.inference_mode():
            traced = torch.jit.trace(loaded.model, example)
        torch.jit.save(traced, str(path), _extra_files={META_FILE: meta_json})
        with torch.inference_mode():
            exported = torch.jit.load(str(path))(batch).numpy()
    t = loaded.meta.temperature
    diff = float(np.abs(_probs(exported, t) - _probs(reference, t)).max())
    (out_dir / "parity.json").write_text(
        json.dumps(
            {"format": fmt, "images": images, "max_abs_diff_probability": diff, "tolerance": tolerance}
        )
    )
    if not diff < tolerance:
        raise ParityError(f"{fmt} export differs from PyTorch by {diff:.2e} (tolerance {tolerance:.0e})")
    return ExportResult(path=path, format=fmt, max_abs_diff=diff, images=images)
