"""Export an artefact to ONNX, TorchScript or TFLite, with a numeric parity check against PyTorch.

The exported graph maps a normalised image batch ``(N, 3, H, W)`` to logits: ONNX with a dynamic batch axis,
TFLite (LiteRT, converted by ``litert-torch``) with batch 1, as an edge device runs it. Everything else a
caller needs (input size, mean/std, crop policy, temperature, threshold, classes) travels in a
``genart.json`` beside the file, and also inside it for ONNX (metadata key ``genart``) and TorchScript (an
extra file).

Parity is measured on real images: the test split of the manifest the artefact was trained on (or of
``data``); only when no manifest is at hand, on generated sample-data images. The figure is the largest
difference in P(ai) between the exported model and PyTorch. The TFLite export also offers an int8 variant
(static quantisation by ``ai-edge-quantizer``, calibrated on the manifest's train split), judged by the test
accuracy it costs, and times PyTorch, ONNX Runtime and the LiteRT interpreter on the same images.

TFLite needs the optional extra ``genart[edge]`` (``make install-edge`` builds ``.venv-edge``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from genart.models.artifact import META_FILE, LoadedModel, load_artifact
from genart.models.predict import ai_probability, is_ai

__all__ = [
    "EDGE_INSTALL_HINT",
    "FORMATS",
    "EdgeExtraMissing",
    "ExportResult",
    "Int8Result",
    "ParityError",
    "ReferenceImages",
    "export_artifact",
    "parity_images",
    "reference_images",
    "run_tflite",
]

ExportFormat = Literal["onnx", "torchscript", "tflite"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript", "tflite")
PARITY_TOLERANCE = 1e-4
# int8 is judged by what it costs: its test accuracy may be at most this far below PyTorch's float accuracy.
INT8_ACCURACY_TOLERANCE = 0.03
PARITY_IMAGES = 32  # ONNX and TorchScript
TFLITE_IMAGES = 512  # TFLite: parity, int8 accuracy and speed on up to this many test images
CALIBRATION_IMAGES = 128
EDGE_INSTALL_HINT = (
    "TFLite export needs the optional extra genart[edge] (litert-torch, ai-edge-litert, ai-edge-quantizer): "
    "run `make install-edge` and use .venv-edge/bin/genart, or `pip install 'genart[edge]'`"
)


class ParityError(RuntimeError):
    """The exported model's probabilities differ from PyTorch's by more than the tolerance."""


class EdgeExtraMissing(RuntimeError):
    """TFLite export was asked for without the ``genart[edge]`` extra installed."""


@dataclass
class Int8Result:
    """The int8 TFLite model and what quantisation cost on the test images."""

    path: Path
    size_bytes: int
    accuracy: float
    float_accuracy: float
    tolerance: float
    mean_abs_diff: float
    max_abs_diff: float
    calibration_images: int


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float
    images: int
    source: str = "generated sample images"
    size_bytes: int = 0
    threads: int | None = None
    speed: dict[str, float] = field(default_factory=dict)  # runtime -> images/s, batch 1
    int8: Int8Result | None = None


@dataclass
class ReferenceImages:
    """Transformed images for the parity check; ``targets`` (1 = ai) when they come from a manifest."""

    images: torch.Tensor
    targets: np.ndarray | None
    source: str
    manifest: Path | None = None


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


def training_manifest(loaded: LoadedModel) -> Path | None:
    """The manifest the artefact was trained on, when it is still where training read it."""
    recorded = (loaded.meta.train_config.get("data") or {}).get("manifest")
    return Path(recorded) if recorded and Path(recorded).exists() else None


def _manifest_images(
    loaded: LoadedModel, manifest: Path, split: str, count: int
) -> tuple[torch.Tensor, np.ndarray]:
    """Up to ``count`` images of one split (a fixed random sample), through the artefact's eval transform."""
    from genart.data.pipeline import ManifestDataset, select_rows

    rows = select_rows(manifest, split, classes=loaded.meta.classes)
    if len(rows) > count:
        rows = rows.sample(n=count, random_state=0).sort_index()
    dataset = ManifestDataset(rows, loaded.spec)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    return images, (rows["target"].to_numpy() > 0).astype(int)


def reference_images(loaded: LoadedModel, data: str | Path | None, count: int) -> ReferenceImages:
    """The parity images: the test split of ``data`` or of the training manifest, else generated ones."""
    manifest = Path(data) if data is not None else training_manifest(loaded)
    if manifest is None:
        return ReferenceImages(parity_images(loaded, count), None, "generated sample images")
    if not manifest.exists():
        raise FileNotFoundError(f"no manifest at {manifest}: pass --data with a split manifest")
    images, targets = _manifest_images(loaded, manifest, "test", count)
    return ReferenceImages(images, targets, f"test split of {manifest}", manifest)


def _export_onnx(loaded: LoadedModel, example: torch.Tensor, path: Path, meta_json: str | None) -> None:
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
    if meta_json is not None:
        model = onnx.load(str(path))
        entry = model.metadata_props.add()
        entry.key, entry.value = "genart", meta_json
        onnx.save(model, str(path))


def _onnx_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run_onnx(path: Path, images: torch.Tensor) -> np.ndarray:
    return _onnx_session(path).run(["logits"], {"image": images.numpy()})[0]


def _edge_modules() -> None:
    """Fail early, with the install command, when the ``genart[edge]`` extra is missing."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
        import ai_edge_quantizer  # noqa: F401
        import litert_torch  # noqa: F401
    except ImportError as exc:
        raise EdgeExtraMissing(f"{EDGE_INSTALL_HINT} ({exc})") from exc


def _export_tflite(loaded: LoadedModel, example: torch.Tensor, path: Path) -> None:
    """Convert with litert-torch at batch 1; ops it cannot lower become a ValueError naming the model."""
    import litert_torch

    try:
        edge_model = litert_torch.convert(loaded.model.eval(), (example[:1],))
    except Exception as exc:  # the converter raises many kinds; the message names the op
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{loaded.meta.name} does not convert to TFLite: {reason}") from exc
    edge_model.export(str(path))


def _interpreter(path: Path, threads: int | None = None):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def _to_input(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """A float batch in the input's dtype: quantised when the model takes integers."""
    if np.issubdtype(detail["dtype"], np.integer):
        scale, zero = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        x = np.clip(np.round(x / scale + zero), info.min, info.max)
    return x.astype(detail["dtype"])


def _from_output(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if np.issubdtype(detail["dtype"], np.integer):
        scale, zero = detail["quantization"]
        return (y.astype(np.float32) - zero) * scale
    return y.astype(np.float32)


def _tflite_runner(path: Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A function from one image batch of the model's batch size to logits, through the LiteRT interpreter."""
    interpreter = _interpreter(path, threads)
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()

    def run(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inp["index"], _to_input(x, inp))
        interpreter.invoke()
        return _from_output(interpreter.get_tensor(out["index"]), out)

    return run


def run_tflite(path: str | Path, images: torch.Tensor, threads: int | None = None) -> np.ndarray:
    """Logits of a (batch-1) TFLite model for ``images`` (N, 3, H, W), one image at a time."""
    run = _tflite_runner(Path(path), threads)
    return np.concatenate([run(x[None]) for x in images.numpy()])


def _quantize_int8(float_path: Path, calibration: torch.Tensor, path: Path) -> None:
    """Static int8 weights and activations (ai-edge-quantizer), activation ranges from ``calibration``."""
    from ai_edge_quantizer import quantizer, recipe

    signatures = _interpreter(float_path).get_signature_list()
    ((key, signature),) = signatures.items()
    (name,) = signature["inputs"]
    qt = quantizer.Quantizer(str(float_path), recipe.static_wi8_ai8())
    samples = [{name: x[None]} for x in calibration.numpy()]
    result = qt.quantize(qt.calibrate({key: samples}, num_threads=os.cpu_count() or 1))
    result.export_model(str(path), overwrite=True)


def _int8_variant(
    loaded: LoadedModel, reference: ReferenceImages, float_logits: np.ndarray, float_path: Path, threads: int
) -> Int8Result:
    if reference.manifest is None or reference.targets is None:
        raise ValueError(
            "--int8 needs real images to calibrate and to measure accuracy: pass --data MANIFEST"
        )
    calibration, _ = _manifest_images(loaded, reference.manifest, "train", CALIBRATION_IMAGES)
    path = float_path.with_name("model.int8.tflite")
    _quantize_int8(float_path, calibration, path)
    t, threshold = loaded.meta.temperature, loaded.meta.threshold
    p_float = ai_probability(float_logits, t)
    p_int8 = ai_probability(run_tflite(path, reference.images, threads), t)
    diff = np.abs(p_int8 - p_float)
    return Int8Result(
        path=path,
        size_bytes=path.stat().st_size,
        accuracy=float((is_ai(p_int8, threshold) == reference.targets).mean()),
        float_accuracy=float((is_ai(p_float, threshold) == reference.targets).mean()),
        tolerance=INT8_ACCURACY_TOLERANCE,
        mean_abs_diff=float(diff.mean()),
        max_abs_diff=float(diff.max()),
        calibration_images=len(calibration),
    )


def _images_per_second(run: Callable[[np.ndarray], Any], images: np.ndarray) -> float:
    """Batch-1 throughput over ``images``, after one warm-up call."""
    run(images[:1])
    start = time.perf_counter()
    for x in images:
        run(x[None])
    return len(images) / (time.perf_counter() - start)


def _speeds(
    loaded: LoadedModel, images: torch.Tensor, tflite: dict[str, Path], threads: int
) -> dict[str, float]:
    """img/s of PyTorch, ONNX Runtime and each TFLite model: batch 1, ``threads`` threads, same images."""
    batch = images.numpy()
    speeds: dict[str, float] = {}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            speeds["PyTorch"] = _images_per_second(lambda x: loaded.model(torch.from_numpy(x)), batch)
    finally:
        torch.set_num_threads(before)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        _export_onnx(loaded, images[:2], onnx_path, None)
        session = _onnx_session(onnx_path, threads)
        speeds["ONNX Runtime"] = _images_per_second(lambda x: session.run(["logits"], {"image": x}), batch)
    for name, path in tflite.items():
        speeds[name] = _images_per_second(_tflite_runner(path, threads), batch)
    return speeds


def export_artifact(
    artifact: str | Path,
    fmt: ExportFormat = "onnx",
    out: str | Path | None = None,
    images: int | None = None,
    tolerance: float = PARITY_TOLERANCE,
    *,
    data: str | Path | None = None,
    int8: bool = False,
    threads: int | None = None,
) -> ExportResult:
    """Export ``artifact`` and check it: max |P(ai)_exported - P(ai)_torch| < ``tolerance`` on real images.

    ``images`` caps the parity images (default 32; TFLite 512). For TFLite, ``int8`` adds a quantised model
    (its accuracy may fall at most :data:`INT8_ACCURACY_TOLERANCE` below PyTorch's), and the result carries
    batch-1 img/s of every runtime with ``threads`` threads (default: all cores).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: use {', '.join(FORMATS)}")
    if int8 and fmt != "tflite":
        raise ValueError("--int8 is for --format tflite")
    if fmt == "tflite":
        _edge_modules()
    loaded = load_artifact(artifact)
    if loaded.meta.kind != "timm":
        raise ValueError(
            f"{loaded.meta.name} is a {loaded.meta.kind!r} model (a frozen encoder and a trained head), "
            "not one PyTorch network: export handles the zoo's timm networks"
        )
    is_uri = str(artifact).startswith(("models:/", "runs:/", "mlflow-artifacts:/"))
    default = Path("exports") / loaded.meta.name if is_uri else Path(loaded.source) / "export"
    out_dir = Path(out) if out else default
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_json = loaded.meta.model_dump_json(indent=2)
    (out_dir / META_FILE).write_text(meta_json)
    count = images or (TFLITE_IMAGES if fmt == "tflite" else PARITY_IMAGES)
    reference = reference_images(loaded, data, count)
    batch = reference.images
    with torch.inference_mode():
        expected = loaded.model(batch).numpy()
    example = batch[:2]
    if fmt == "onnx":
        path = out_dir / "model.onnx"
        _export_onnx(loaded, example, path, meta_json)
        exported = _run_onnx(path, batch)
    elif fmt == "torchscript":
        path = out_dir / "model.torchscript.pt"
        with torch.inference_mode():
            traced = torch.jit.trace(loaded.model, example)
        torch.jit.save(traced, str(path), _extra_files={META_FILE: meta_json})
        with torch.inference_mode():
            exported = torch.jit.load(str(path))(batch).numpy()
    else:
        path = out_dir / "model.tflite"
        _export_tflite(loaded, example, path)
        exported = run_tflite(path, batch, threads)
    t = loaded.meta.temperature
    diff = float(np.abs(ai_probability(exported, t) - ai_probability(expected, t)).max())
    result = ExportResult(
        path=path, format=fmt, max_abs_diff=diff, images=len(batch), source=reference.source,
        size_bytes=path.stat().st_size,
    )  # fmt: skip
    if diff < tolerance and fmt == "tflite":
        result.threads = threads or os.cpu_count() or 1
        if int8:
            result.int8 = _int8_variant(loaded, reference, exported, path, result.threads)
        tflite = {"TFLite": path} | ({"TFLite int8": result.int8.path} if result.int8 else {})
        result.speed = _speeds(loaded, batch, tflite, result.threads)
    _write_report(result, tolerance, out_dir / "parity.json")
    if not diff < tolerance:
        raise ParityError(f"{fmt} export differs from PyTorch by {diff:.2e} (tolerance {tolerance:.0e})")
    if result.int8 and result.int8.accuracy < result.int8.float_accuracy - result.int8.tolerance:
        raise ParityError(
            f"int8 costs too much accuracy: {result.int8.accuracy:.4f} vs {result.int8.float_accuracy:.4f} "
            f"float (tolerance {result.int8.tolerance * 100:.0f} points); use the float model"
        )
    return result


def _write_report(result: ExportResult, tolerance: float, path: Path) -> None:
    report = {
        "format": result.format,
        "images": result.images,
        "source": result.source,
        "max_abs_diff_probability": result.max_abs_diff,
        "tolerance": tolerance,
        "size_bytes": result.size_bytes,
    }
    if result.speed:
        report |= {"threads": result.threads, "images_per_second_batch1": result.speed}
    if result.int8:
        report["int8"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(result.int8).items()}
    path.write_text(json.dumps(report, indent=2))
