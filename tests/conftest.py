"""Shared fixtures: image factories, a tiny GenImage tree, and one local Ray cluster per test session."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

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


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[dict[str, int]]:
    """One local Ray for every ``ray`` test. More logical CPUs than cores, so Data and Train both get some.

    It has a dashboard on a free port, so that `serve deploy` / `genart serve up` can deploy to it exactly as
    to a production head, and a metrics endpoint for the Prometheus checks.
    """
    import ray

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
