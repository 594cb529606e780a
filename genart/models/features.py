"""Frozen-encoder features, computed once per image and view with Ray Data and cached by sha256 (Parquet).

A *view* is how an image is shown to the encoder:

- ``eval``: the model's eval transform on the image decoded as serving decodes it (JPEG DCT scaling and a box
  reduce toward the model's input, :func:`genart.data.transforms.decode_with_header`), so a served upload gets
  the features its evaluation measured;
- ``train<k>``: the k-th class-matched training view: the same random down-scale, JPEG re-save and random
  resized crop for both classes (:func:`genart.data.transforms.train_transform` with the config's
  augmentations), seeded by the image's sha256 and ``k`` so a view is reproducible and cacheable;
- ``sized<k>``: the k-th class-matched eval view: the same random short side and JPEG re-save for both
  classes, then the eval transform with its eval-time JPEG
  (:func:`genart.data.transforms.matched_eval_transform`), seeded like ``train<k>``;
- each robustness condition of :data:`genart.data.transforms.DEGRADATIONS` (``jpeg75``, ``half``, ...),
  applied before the eval transform, as evaluation does.

Training views and degradations start from the full decode, as :class:`genart.data.pipeline.ManifestDataset`
does for them.

The cache key covers everything that changes a feature: encoder sha256, taps, the input policy, the view
and (for training views) the augmentation settings. A head then trains in seconds on cached features.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from tqdm.auto import tqdm

from genart.config import AugmentConfig
from genart.data.transforms import (
    DEGRADATIONS,
    ImageDecodeError,
    InputSpec,
    decode_image,
    eval_transform,
    matched_eval_transform,
    train_transform,
)

__all__ = ["FeatureCache", "Featurize", "cache_dir", "is_train_view", "view_transform"]

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """``$GENART_CACHE_DIR/features``, default ``~/.cache/genart/features``."""
    root = os.environ.get("GENART_CACHE_DIR") or Path.home() / ".cache" / "genart"
    return Path(root) / "features"


def is_train_view(view: str) -> bool:
    return view.startswith("train") and view[5:].isdigit()


def is_sized_view(view: str) -> bool:
    return view.startswith("sized") and view[5:].isdigit()


def view_transform(
    view: str, spec: InputSpec, augment: AugmentConfig | None = None
) -> Callable[[Image.Image, str], torch.Tensor]:
    """``(image, sha256) -> tensor`` for a view; training views are seeded by the image and ``k``."""
    if view == "eval":
        transform = eval_transform(spec)
        return lambda image, sha: transform(image)
    if view in DEGRADATIONS:
        transform, degrade = eval_transform(spec), DEGRADATIONS[view]
        return lambda image, sha: transform(degrade(image))
    if is_train_view(view) or is_sized_view(view):
        aug, k = augment or AugmentConfig(), int(view[5:])
        sized = is_sized_view(view)
        transform = matched_eval_transform(spec, aug) if sized else train_transform(spec, aug)

        def seeded(image: Image.Image, sha: str) -> torch.Tensor:
            seed = int(sha[:12], 16) + 1_000_003 * k + (7_919 if sized else 0)
            random.seed(seed)
            torch.manual_seed(seed)
            return transform(image)

        return seeded
    raise ValueError(
        f"unknown view {view!r}: use 'eval', 'train<k>', 'sized<k>' or one of {sorted(DEGRADATIONS)}"
    )


class Featurize:
    """Ray Data actor: ``path``/``sha256`` batches -> ``sha256``/``features`` (unreadable images dropped)."""

    def __init__(self, encoder_factory: Callable[[], Any], spec: InputSpec, view: str, augment: dict | None):
        torch.set_num_threads(1)
        self.encoder = encoder_factory()
        self.transform = view_transform(view, spec, AugmentConfig(**augment) if augment else None)
        self.specs, self.augmented = [spec], view != "eval"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shas, tensors = [], []
        for path, sha in zip(batch["path"], batch["sha256"], strict=True):
            try:
                image = decode_image(Path(path).read_bytes(), self.specs, augmented=self.augmented)
            except (OSError, ImageDecodeError) as exc:
                log.warning("skipping %s: %s", path, exc)
                continue
            shas.append(sha)
            tensors.append(self.transform(image, sha))
        if not tensors:
            return {
                "sha256": np.array([], dtype=object),
                "features": np.zeros((0, self.encoder.dim), np.float32),
            }
        return {
            "sha256": np.array(shas, dtype=object),
            "features": self.encoder.features(torch.stack(tensors)),
        }


class FeatureCache:
    """Features of one encoder, per view, in ``<root>/<key>/part-*.parquet`` (``sha256``, ``features``)."""

    def __init__(
        self,
        encoder_factory: Callable[[], Any],
        describe: dict[str, Any],
        spec: InputSpec,
        augment: AugmentConfig | None = None,
        root: str | Path | None = None,
        local_below: int = 64,
    ) -> None:
        self.local_below = local_below
        self.encoder_factory = encoder_factory
        self.describe = describe
        self.spec = spec
        self.augment = augment or AugmentConfig()
        self.root = Path(root) if root else cache_dir()

    def key(self, view: str) -> str:
        spec = self.spec.to_dict()
        # the eval-time JPEG changes no training view, and a spec without one keys as it did before it existed
        if is_train_view(view) or spec["jpeg_quality"] is None:
            del spec["jpeg_quality"]
        parts = {"encoder": self.describe, "spec": spec, "view": view}
        if view == "eval":  # decoded as serving decodes it; features cached before that are not reused
            parts["decode"] = "served"
        if is_train_view(view) or is_sized_view(view):
            parts["augment"] = self.augment.model_dump(mode="json")
        if is_sized_view(view):
            parts["sized"] = "short side, JPEG, eval transform"
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]

    def folder(self, view: str) -> Path:
        return self.root / self.key(view)

    def load(self, view: str) -> dict[str, np.ndarray]:
        folder = self.folder(view)
        parts = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
        found: dict[str, np.ndarray] = {}
        for part in parts:
            table = pq.read_table(part)
            features = np.asarray(table.column("features").combine_chunks().flatten(), np.float32)
            features = features.reshape(len(table), -1)
            found.update(zip(table.column("sha256").to_pylist(), features, strict=True))
        return found

    def _write(self, view: str, shas: list[str], features: np.ndarray) -> None:
        folder = self.folder(view)
        folder.mkdir(parents=True, exist_ok=True)
        flat = pa.array(features.astype(np.float32).ravel())
        table = pa.table(
            {"sha256": pa.array(shas), "features": pa.FixedSizeListArray.from_arrays(flat, features.shape[1])}
        )
        name = f"part-{time.time_ns()}-{os.getpid()}.parquet"
        pq.write_table(table, folder / f".{name}")
        os.replace(folder / f".{name}", folder / name)  # a reader never sees half a part
        (folder / "key.json").write_text(json.dumps({"encoder": self.describe, "view": view}, indent=1))

    def compute(self, rows: pd.DataFrame, view: str, concurrency: int | None = None) -> int:
        """Encode the rows (``path``, ``sha256``) missing from the cache with Ray Data; returns how many."""
        return self._encode(self._missing(rows, self.load(view)), view, concurrency)

    @staticmethod
    def _missing(rows: pd.DataFrame, have: dict[str, np.ndarray]) -> pd.DataFrame:
        todo = rows.drop_duplicates("sha256")
        return todo[~todo["sha256"].isin(have)][["path", "sha256"]].reset_index(drop=True)

    def _encode(self, todo: pd.DataFrame, view: str, concurrency: int | None = None) -> int:
        """Encode ``todo`` (``path``, ``sha256``, none cached) and write it to the cache; returns how many."""
        import ray

        if todo.empty:
            return 0
        if len(todo) <= self.local_below:  # a few images: not worth starting actors
            out = Featurize(self.encoder_factory, self.spec, view, self.augment.model_dump(mode="json"))(
                {"path": todo["path"].to_numpy(), "sha256": todo["sha256"].to_numpy()}
            )
            if len(out["sha256"]):
                self._write(view, list(out["sha256"]), out["features"])
            return len(out["sha256"])
        concurrency = concurrency or max(1, min(len(todo) // 16 + 1, os.cpu_count() or 1))
        # Blocks made here, not by a repartition: an all-to-all step needs CPUs the actors already hold.
        size = -(-len(todo) // max(1, min(len(todo) // 32, 512)))
        blocks = [todo.iloc[i : i + size] for i in range(0, len(todo), size)]
        dataset = ray.data.from_pandas(blocks).map_batches(
            Featurize,
            fn_constructor_args=(self.encoder_factory, self.spec, view, self.augment.model_dump(mode="json")),
            batch_size=16,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=concurrency),
            num_cpus=1,
        )
        done = 0
        with tqdm(total=len(todo), desc=f"features ({view})", unit="img", mininterval=10) as progress:
            for batch in dataset.iter_batches(batch_size=128, batch_format="numpy"):
                if len(batch["sha256"]):
                    self._write(view, list(batch["sha256"]), np.stack(batch["features"]))
                    done += len(batch["sha256"])
                progress.update(len(batch["sha256"]))
        log.info("encoded %d images for view %s", done, view)
        return done

    def matrix(self, rows: pd.DataFrame, view: str, compute: bool = True) -> np.ndarray:
        """Features aligned with ``rows`` (by ``sha256``); missing ones computed first unless told not to."""
        have = self.load(view)
        if compute and self._encode(self._missing(rows, have), view):
            have = self.load(view)  # read the cache once more only when something was added to it
        missing = [s for s in rows["sha256"] if s not in have]
        if missing:
            raise KeyError(
                f"{len(missing)} images have no {view!r} features (unreadable?), e.g. {missing[0]}"
            )
        return np.stack([have[s] for s in rows["sha256"]]) if len(rows) else np.zeros((0, 0), np.float32)
