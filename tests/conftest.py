"""Shared fixtures: image factories, a tiny GenImage tree, untrained artefacts, the live Serve config, and
one local Ray cluster per test session."""

from __future__ import annotations

import http.server
import io
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Runs that tests track go to a throwaway MLflow database, never to ./mlflow.db in the checkout.
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp(prefix='genart-mlflow-')}/mlflow.db"

ImageWriter = Callable[..., Path]


def image_bytes(
    size: tuple[int, int] = (48, 40), fmt: str = "PNG", mode: str = "RGB", seed: int = 0, **save
) -> bytes:
    """Encoded bytes of a random image: noise, so every seed gives a distinct file."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(array, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG header that claims a huge size over almost no data: a decompression bomb's calling card."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def write_image() -> ImageWriter:
    """``write_image(path, size=(w, h), fmt="PNG", mode="RGB", seed=0, **save_kwargs)`` -> path."""

    def write(path: Path, size=(48, 40), fmt="PNG", mode="RGB", seed=0, **save) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(size, fmt, mode, seed, **save))
        return path

    return write


def build_tree(
    root: Path, generators=("imagenet_glide", "imagenet_ai_0419_biggan"), per_folder: int = 4
) -> Path:
    """A small GenImage tree of noise images: nature as JPEG, ai as PNG (the benchmark's trap)."""
    seed = 0
    for gen in generators:
        for split in ("train", "val"):
            for label, fmt, ext in (("nature", "JPEG", "jpg"), ("ai", "PNG", "png")):
                for i in range(per_folder):
                    seed += 1
                    path = root / gen / split / label / f"{i}.{ext}"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(image_bytes((40 + i, 36), fmt, seed=seed))
    return root


@pytest.fixture
def tiny_tree(tmp_path: Path) -> Path:
    return build_tree(tmp_path / "tiny")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated sample dataset, small: 7 generators x (8 train + 2 val) x 2 labels at 64 px."""
    from genart.data.synth import synthesize

    root = tmp_path_factory.mktemp("synth") / "genimage"
    synthesize(
        root, images_per_class=8, val_images_per_class=2, size=64, seed=0, formats="trap", progress=False
    )
    return root


@pytest.fixture(scope="session")
def synth_manifest(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample dataset indexed and split 70/15/15."""
    from genart.data.index import index_tree, read_manifest, write_manifest
    from genart.data.split import assign_splits

    out = tmp_path_factory.mktemp("manifest")
    index_tree(synth_root, out / "manifest.parquet", workers=1, progress=False)
    result = assign_splits(read_manifest(out / "manifest.parquet"))
    return write_manifest(result.manifest, out / "manifest.split.parquet")


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = (
        128  # the load tests open 64 connections at once; the default backlog of 5 resets some
    )


@contextmanager
def http_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threaded HTTP server on 127.0.0.1 answering with ``handler`` for the length of the block: its URL."""
    server = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


#: What an artefact trained on the generated sample data records (``ArtifactMeta.trained_on``).
SAMPLE_DATA = {"data": "sample", "images": 98, "families": ["imagenet_glide"], "generated": True}


def untrained_artifact(root: Path, name: str, zoo: str, seed: int, threshold: float, **meta: Any) -> Path:
    """An untrained ``zoo`` model saved as artefact ``root/name`` (``classes`` and ``input_size`` in ``meta``
    choose the head and input; the rest goes into its metadata)."""
    import torch

    from genart.models.artifact import ArtifactMeta, save_artifact
    from genart.models.zoo import build_model, get_entry

    torch.manual_seed(seed)
    classes = meta.pop("classes", ["nature", "ai"])
    model, spec = build_model(
        zoo, pretrained=False, num_classes=len(classes), input_size=meta.pop("input_size", None)
    )
    entry = get_entry(zoo)
    info = ArtifactMeta(
        name=zoo, timm_id=entry.timm_id, residual=entry.residual, input=spec.to_dict(), classes=classes,
        threshold=threshold, **meta,
    )  # fmt: skip
    return save_artifact(model, info, root / name)


def _coverage_env() -> dict[str, str]:
    """Under coverage, the Serve replicas measure too: coverage's ``.pth`` hook starts it in each replica from
    ``COVERAGE_PROCESS_START``, and each writes a parallel data file beside the suite's for pytest-cov to
    combine (see ``[tool.coverage.run]`` in pyproject.toml)."""
    import coverage

    current = coverage.Coverage.current()
    if current is None:
        return {}
    return {
        "COVERAGE_PROCESS_START": str(Path(__file__).resolve().parent.parent / "pyproject.toml"),
        "COVERAGE_FILE": os.path.abspath(current.config.data_file),
    }


def live_serve_config(
    port: int, env: dict[str, str], artifacts: dict[str, Path], timeout_s: float, **args: Any
) -> dict[str, Any]:
    """The Serve config the live-app tests deploy with `genart serve up`: the genart app on 127.0.0.1:``port``
    serving a ``detector`` and an ``attributor`` (``artifacts``), ``env`` in its runtime environment, ``args``
    (limits, URL allow-list) for ``build_app``, and small CPU and memory shares so that it fits beside the
    tests."""
    from genart.serve.app import SERVE_ENV

    env = {**SERVE_ENV, **env, **_coverage_env()}
    small = {"ray_actor_options": {"num_cpus": 0.1}}
    capped = {"ray_actor_options": {"num_cpus": 0.1, "memory": 1536 * 2**20}}  # under the 2-3 GiB defaults
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port, "request_timeout_s": timeout_s},
        "applications": [
            {
                "name": "genart",
                "route_prefix": "/",
                "import_path": "genart.serve.app:build_app",
                "runtime_env": {"env_vars": env},
                "args": {"models": [{"name": "detector"}, {"name": "attributor"}], **args},
                "deployments": [
                    {"name": "EnsembleIngress", **small},
                    {"name": "Preprocessor", **capped},
                    {"name": "detector", **capped, "user_config": {"artifact": str(artifacts["detector"])}},
                    {
                        "name": "attributor",
                        **capped,
                        "user_config": {"artifact": str(artifacts["attributor"])},
                    },
                ],
            }
        ],
    }


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[dict[str, int]]:
    """One local Ray for every ``ray`` test. More logical CPUs than cores, so Data and Train both get some.

    It has a dashboard on a free port, so that `serve deploy` / `genart serve up` can deploy to it exactly as
    to a production head, and a metrics endpoint for the Prometheus checks.
    """
    import ray

    from genart.bench.harness import free_port

    ports = {"dashboard_port": free_port(), "metrics_port": free_port()}
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=ports["dashboard_port"],
        _metrics_export_port=ports["metrics_port"],
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield ports
    finally:
        ray.shutdown()
