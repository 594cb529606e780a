"""The Serve deployments behind the ingress: one Preprocessor, and one ModelDeployment per model.

The Preprocessor decodes and validates an image once and makes the tensor each distinct model input needs,
with the transforms training used (:mod:`genart.data.transforms`). A ModelDeployment holds one artefact,
batches requests with ``@serve.batch``, and swaps its artefact in ``reconfigure`` (a new ``user_config``)
without a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray import serve

from genart.config import MAX_IMAGE_PIXELS, DecodeLimits
from genart.data.transforms import ImageDecodeError, InputSpec, decode_with_header, eval_transform
from genart.serve.metrics import save_coverage

__all__ = [
    "MODEL_MEMORY",
    "PREPROCESSOR_MEMORY",
    "ModelDeployment",
    "Prepared",
    "Preprocessor",
    "check_memory",
    "memory_cap",
    "prepare_image",
    "resident_bytes",
    "spec_key",
]

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

    def header(self) -> Prepared:
        """The same image without its tensors: what the ingress needs to answer and store a prediction."""
        return dataclasses.replace(self, tensors={})


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
            # uint8, a quarter of float32's bytes; contiguous because timm's uint8 transform leaves a
            # channels-last view, and a model fed that layout computes logits that differ from evaluation's
            # in the last bits (tests/serve/test_units.py checks they are equal)
            prepared.tensors[key] = eval_transform(spec, as_uint8=True)(image).contiguous().numpy()
    except ImageDecodeError as exc:
        prepared.error = str(exc)
        prepared.tensors = {}
        return prepared
    prepared.decode_ms = (time.perf_counter() - start) * 1000
    return prepared


#: Memory each replica declares (``ray_actor_options.memory``) and may hold before it reports unhealthy.
#: Measured idle on the project's machine (tests/serve/test_hostile.py): Preprocessor 884 MiB resident
#: (torch and timm imported), a model replica 970 MiB with a small CPU model. The decoding budget adds at
#: most 384 MiB per decode (``DecodeLimits.max_preprocess_bytes``): a 2 GiB cap lets two run at once.
PREPROCESSOR_MEMORY = 2 * 2**30
MODEL_MEMORY = 3 * 2**30


def resident_bytes() -> int:
    """This process' resident memory now (Linux ``/proc``; elsewhere its peak, from ``getrusage``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_cap(default: int) -> int:
    """The memory this replica declared in ``ray_actor_options``, or ``default`` where it declared none."""
    import ray

    context = ray.get_runtime_context() if ray.is_initialized() else None
    # Only a worker (a replica) has assigned resources; a driver (a script, the test process) asks in vain.
    is_worker = context is not None and context.worker.mode == ray.WORKER_MODE
    declared = context.get_assigned_resources().get("memory") if is_worker else None
    return int(declared) if declared else default


def check_memory(cap: int, who: str) -> None:
    """Raise when the replica has grown past ``cap``: Serve then replaces it, instead of the node's OOM
    killer taking the controller and the ingress with it."""
    rss = resident_bytes()
    if rss > cap:
        raise RuntimeError(
            f"{who}: resident memory {rss / 2**20:.0f} MiB is above its cap of {cap / 2**20:.0f} MiB; "
            "Serve replaces this replica"
        )


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25, "memory": PREPROCESSOR_MEMORY},
    max_ongoing_requests=32,
    health_check_period_s=5,
)
class Preprocessor:
    """Decodes and validates uploads within the decoding budget, off the ingress' event loop (a thread per
    request). Its health check fails once its resident memory passes its declared memory."""

    def __init__(self, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        self.limits = DecodeLimits(max_pixels=max_pixels)
        self.memory_cap = memory_cap(PREPROCESSOR_MEMORY)
        # Each decode may take up to the budget: as many at once as fit between the idle replica and its cap,
        # so that concurrent hostile uploads queue here instead of pushing the replica past its cap.
        self.decode_slots = max(1, (self.memory_cap - resident_bytes()) // self.limits.max_preprocess_bytes)
        self._slots = asyncio.Semaphore(self.decode_slots)
        self.work = {"cpu_s": 0.0, "images": 0}

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        if "max_pixels" in user_config:
            self.limits = DecodeLimits(
                **{**self.limits.model_dump(), "max_pixels": user_config["max_pixels"]}
            )

    def ping(self) -> bool:
        return True

    def check_health(self) -> None:
        save_coverage()
        check_memory(self.memory_cap, "Preprocessor")

    def memory(self) -> dict[str, int]:
        """Resident memory and cap in bytes (what the health check compares); decodes allowed at once."""
        return {"resident": resident_bytes(), "cap": self.memory_cap, "decode_slots": self.decode_slots}

    def usage(self) -> dict[str, float]:
        """Decoding and transforming since the replica started: CPU seconds (on the threads that did it) and
        images. The serving benchmark tells this work from the cost of the layout around it."""
        return dict(self.work)

    def _prepare(self, data: bytes, specs: dict[str, dict[str, Any]]) -> Prepared:
        cpu = time.thread_time()
        prepared = prepare_image(data, specs, self.limits)
        self.work["cpu_s"] += time.thread_time() - cpu
        self.work["images"] += 1
        return prepared

    async def prepare(self, data: bytes, specs: dict[str, dict[str, Any]]) -> Prepared:
        async with self._slots:
            return await asyncio.to_thread(self._prepare, data, specs)


def _weights_version(local_dir: Any) -> str:
    """A content hash of the weights, so two artefacts with the same name are told apart."""
    digest = hashlib.sha256()
    with open(local_dir / "model.safetensors", "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5, "memory": MODEL_MEMORY},
    max_ongoing_requests=64,
    health_check_period_s=10,
)
class ModelDeployment:
    """One artefact behind ``@serve.batch``. Its ``user_config`` sets the artefact and the batching."""

    def __init__(self, name: str, artifact: str | None = None, weight: float = 1.0) -> None:
        self.memory_cap = memory_cap(MODEL_MEMORY)
        self.name = name
        self.weight = weight
        self.loaded: Any = None
        self.version = ""
        self.key = ""
        self.forward = {"cpu_s": 0.0, "images": 0, "batches": 0}
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
        save_coverage()
        if self.loaded is None:
            raise RuntimeError(f"model {self.name} has no artefact: set 'artifact' in its user_config")
        check_memory(self.memory_cap, f"model {self.name}")

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
            "architecture": meta.timm_id or f"{meta.kind}:{(meta.encoder or {}).get('file', '?')}",
            "trained_on": meta.trained_on,
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
        start, cpu = time.perf_counter(), time.thread_time()
        logits = loaded.logits(torch.from_numpy(np.stack([items[i][1] for i in fresh])))
        p_ai = ai_probability(logits, loaded.meta.temperature)
        elapsed = (time.perf_counter() - start) * 1000
        self._count_forward(time.thread_time() - cpu, len(fresh))
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

    def _count_forward(self, cpu_s: float, images: int) -> None:
        self.forward["cpu_s"] += cpu_s
        self.forward["images"] += images
        self.forward["batches"] += 1

    def usage(self) -> dict[str, float]:
        """Forward passes since the replica started: their CPU seconds (on the thread that runs them; torch
        runs on that one thread when Ray gives the replica less than 2 CPUs), images and batches. The
        serving benchmark tells the model work from the cost of the layout around it with these."""
        return dict(self.forward)

    async def score(self, prepared: Prepared) -> dict[str, Any]:
        """P(ai) for an image the Preprocessor prepared, plus the image's header (``image``).

        The ingress passes the Preprocessor's ``DeploymentResponse`` straight in: Serve hands this replica
        the object-store reference, so the tensors go from the Preprocessor to each model without passing
        through the ingress. An image that could not be used comes back as ``unprocessable``; a tensor made
        for another input spec (the model was just swapped) as ``stale_spec``, and the ingress prepares
        again."""
        if prepared.error:
            return {"error": "unprocessable", "detail": prepared.error}
        if self.loaded is None:
            return {"error": "not_loaded"}
        key = self.key
        tensor = prepared.tensors.get(key)
        if tensor is None:
            return {"error": "stale_spec", "spec_key": key}
        result = await self.infer((key, tensor))
        return result if "error" in result else {**result, "image": prepared.header()}

    async def predict(self, key: str, tensor: np.ndarray) -> dict[str, Any]:
        """P(ai) for one prepared tensor. A tensor made for another input spec (the model was just swapped)
        is refused with ``stale_spec`` so that the caller prepares again."""
        if self.loaded is None:
            return {"error": "not_loaded"}
        if key != self.key:
            return {"error": "stale_spec", "spec_key": self.key}
        return await self.infer((key, tensor))
