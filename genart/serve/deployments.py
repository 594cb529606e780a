"""The Serve deployments behind the ingress: one Preprocessor, and one ModelDeployment per model.

The Preprocessor decodes and validates an image once and makes the tensor each distinct model input needs,
with the transforms training used (:mod:`genart.data.transforms`). A ModelDeployment holds one artefact,
batches requests with ``@serve.batch``, and swaps its artefact in ``reconfigure`` (a new ``user_config``)
without a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray import serve

from genart.config import MAX_IMAGE_PIXELS, DecodeLimits
from genart.data.transforms import ImageDecodeError, InputSpec, decode_with_header, eval_transform

__all__ = ["ModelDeployment", "Prepared", "Preprocessor", "prepare_image", "spec_key"]

log = logging.getLogger("genart.serve")


def spec_key(spec: InputSpec | dict[str, Any]) -> str:
    """A stable key for an input spec: models with equal specs share one preprocessed tensor."""
    raw = spec.to_dict() if isinstance(spec, InputSpec) else InputSpec.from_dict(spec).to_dict()
    return hashlib.sha1(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class Prepared:
    """A decoded image: its identity, and one tensor per input spec (or why it could not be used)."""

    sha256: str
    size_bytes: int
    width: int = 0
    height: int = 0
    format: str | None = None
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    error: str | None = None
    decode_ms: float = 0.0


def prepare_image(
    data: bytes, specs: dict[str, dict[str, Any]], limits: DecodeLimits | None = None
) -> Prepared:
    """Decode ``data`` once within the budget for every spec, then apply each spec's eval transform.

    Bad bytes, or bytes whose header claims more than ``limits`` allow, set ``error``; it never raises.
    """
    start = time.perf_counter()
    prepared = Prepared(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    input_specs = {key: InputSpec.from_dict(raw) for key, raw in specs.items()}
    try:
        image, header = decode_with_header(data, list(input_specs.values()), limits)
        prepared.width, prepared.height = header.upright_size
        prepared.format = header.format
        for key, spec in input_specs.items():
            prepared.tensors[key] = eval_transform(spec)(image).numpy()
    except ImageDecodeError as exc:
        prepared.error = str(exc)
        prepared.tensors = {}
        return prepared
    prepared.decode_ms = (time.perf_counter() - start) * 1000
    return prepared


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32)
class Preprocessor:
    """Decodes and validates uploads, off the ingress' event loop (a thread per request)."""

    def __init__(self, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        self.limits = DecodeLimits(max_pixels=max_pixels)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        if "max_pixels" in user_config:
            self.limits = DecodeLimits(
                **{**self.limits.model_dump(), "max_pixels": user_config["max_pixels"]}
            )

    def ping(self) -> bool:
        return True

    async def prepare(self, data: bytes, specs: dict[str, dict[str, Any]]) -> Prepared:
        return await asyncio.to_thread(prepare_image, data, specs, self.limits)


def _weights_version(local_dir: Any) -> str:
    """A content hash of the weights, so two artefacts with the same name are told apart."""
    digest = hashlib.sha256()
    with open(local_dir / "model.safetensors", "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64, health_check_period_s=10)
class ModelDeployment:
    """One artefact behind ``@serve.batch``. Its ``user_config`` sets the artefact and the batching."""

    def __init__(self, name: str, artifact: str | None = None, weight: float = 1.0) -> None:
        self.name = name
        self.weight = weight
        self.loaded: Any = None
        self.version = ""
        self.key = ""
        if artifact:
            self._load(artifact)

    def _load(self, artifact: str) -> None:
        import torch

        from genart.models.artifact import load_artifact, resolve_uri

        start = time.perf_counter()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        loaded = load_artifact(artifact, device=device)
        version = loaded.meta.version or _weights_version(resolve_uri(artifact))
        # One assignment swaps model, version and key together for requests that arrive after it.
        self.loaded, self.version, self.key = loaded, version, spec_key(loaded.spec)
        log.info(
            "model %s loaded %s (version %s) in %.1f s on %s",
            self.name, artifact, version, time.perf_counter() - start, device,
        )  # fmt: skip

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        artifact = user_config.get("artifact")
        if artifact and (self.loaded is None or artifact != self.loaded.source):
            self._load(str(artifact))
        if "weight" in user_config:
            self.weight = float(user_config["weight"])
        if "max_batch_size" in user_config:
            self.infer.set_max_batch_size(int(user_config["max_batch_size"]))
        if "batch_wait_timeout_s" in user_config:
            self.infer.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))

    def check_health(self) -> None:
        if self.loaded is None:
            raise RuntimeError(f"model {self.name} has no artefact: set 'artifact' in its user_config")

    def describe(self) -> dict[str, Any]:
        """What the ingress needs to know: the input spec to prepare, the threshold, the version."""
        if self.loaded is None:
            return {"name": self.name, "loaded": False}
        meta = self.loaded.meta
        return {
            "name": self.name,
            "loaded": True,
            "version": self.version,
            "source": self.loaded.source,
            "architecture": meta.timm_id,
            "classes": meta.classes,
            "input": self.loaded.spec.to_dict(),
            "spec_key": self.key,
            "threshold": meta.threshold,
            "temperature": meta.temperature,
            "weight": self.weight,
            "metrics": {k: v for k, v in meta.metrics.items() if isinstance(v, int | float | str)},
            "created_at": meta.created_at,
        }

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def infer(self, items: list[tuple[str, np.ndarray]]) -> list[dict[str, Any]]:
        import torch

        from genart.models.predict import ai_probability, class_probabilities

        loaded, key = self.loaded, self.key  # a swap during this batch must not mix two models' inputs
        fresh = [i for i, (k, _) in enumerate(items) if k == key]
        out: list[dict[str, Any]] = [{"error": "stale_spec", "spec_key": key} for _ in items]
        if not fresh:
            return out
        start = time.perf_counter()
        logits = loaded.logits(torch.from_numpy(np.stack([items[i][1] for i in fresh])))
        p_ai = ai_probability(logits, loaded.meta.temperature)
        elapsed = (time.perf_counter() - start) * 1000
        classes = loaded.meta.classes
        probs = class_probabilities(logits, loaded.meta.temperature) if len(classes) > 2 else None
        for j, i in enumerate(fresh):
            item: dict[str, Any] = {
                "probability": float(p_ai[j]),
                "batch_size": len(fresh),
                "latency_ms": elapsed,
                "version": self.version,
                "threshold": loaded.meta.threshold,
            }
            if probs is not None:  # an attribution model: the most likely generator among the AI classes
                best = int(np.argmax(probs[j][1:])) + 1
                item["generator"], item["generator_probability"] = classes[best], float(probs[j][best])
            out[i] = item
        return out

    async def predict(self, key: str, tensor: np.ndarray) -> dict[str, Any]:
        """P(ai) for one prepared tensor. A tensor made for another input spec (the model was just swapped)
        is refused with ``stale_spec`` so that the ingress refreshes and prepares again."""
        if self.loaded is None:
            return {"error": "not_loaded"}
        if key != self.key:
            return {"error": "stale_spec", "spec_key": self.key}
        return await self.infer((key, tensor))
