"""Ray Data datasets from a manifest: decoded, transformed, labelled batches for training and inference.

The same decode and transform functions feed a plain PyTorch ``Dataset`` (:class:`ManifestDataset`), used
for local evaluation and as the baseline in ``make bench-data``, so the two paths cannot drift apart.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from genart.config import AugmentConfig
from genart.data.index import read_manifest, usable
from genart.data.layout import LABEL_AI, label_to_target
from genart.data.provenance import PROVENANCE_COLUMNS
from genart.data.transforms import (
    DEGRADATIONS,
    ImageDecodeError,
    InputSpec,
    decode_image,
    eval_transform,
    train_transform,
)

__all__ = [
    "ManifestDataset",
    "cap_per_generator",
    "decode_batch",
    "epoch_passes",
    "make_dataset",
    "select_rows",
    "split_epochs",
]

# What a selected row carries from the manifest besides path, label and generator, where the manifest has it.
ROW_PROVENANCE = ("sha256", *PROVENANCE_COLUMNS)

log = logging.getLogger(__name__)

# The decoded bytes each input block, so each Ray Data task, aims at. Ray Data 2.60's executor notices a
# finished task only on its next wait (up to 100 ms, and its end of stream on a later one), and a CPU stays
# idle meanwhile: with one 32-image batch per task (0.3 s of decoding at 224 px) the decode processes idled
# about 40% of the time, and with 128 images of 128 px per task (0.18 s) about half. Blocks of about 32 MiB
# (192 uint8 images at 224 px, 672 at 128 px: 1-2 s of decoding here) amortise it, and stay well under Ray
# Data's 128 MiB target for a block (measured: the README's bench-data section).
BLOCK_BYTES = 32 * 2**20


def rows_per_block(spec: InputSpec, batch_size: int, as_uint8: bool) -> int:
    """Whole batches of decoded images adding up to about :data:`BLOCK_BYTES`, at least one batch."""
    batch_bytes = batch_size * 3 * spec.input_size**2 * (1 if as_uint8 else 4)
    return max(1, BLOCK_BYTES // batch_bytes) * batch_size


def cap_per_generator(rows: pd.DataFrame, limit: int | None, seed: int = 0) -> pd.DataFrame:
    """At most ``limit`` rows per generator x label, a seeded sample by path hash; order kept. None: all."""
    if limit is None:
        return rows
    import hashlib

    rank = rows["path"].map(lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    keep = rank.groupby([rows["generator"], rows["label"]]).rank(method="first") <= limit
    return rows[keep.to_numpy()].reset_index(drop=True)


def select_rows(
    manifest: pd.DataFrame | str | Path,
    split: str | None,
    generators: list[str] | None = None,
    exclude_generators: list[str] | None = None,
    classes: list[str] | None = None,
) -> pd.DataFrame:
    """Usable rows of one split (``None``: all), optionally restricted to some generators.

    Returns ``path``, ``target``, ``label`` and ``generator``, in manifest order, with the manifest's
    ``sha256`` and provenance (``family``, ``source``, ``origin``) where it has them, so feature caches and
    per-source reports need not read the files or the manifest again. ``target`` is 0 for nature
    and 1 for ai; for an attribution model, pass its ``classes`` (``["nature", generator, ...]``) and the
    target of an AI image is its generator's index, AI images of other generators being left out.
    """
    df = read_manifest(manifest) if isinstance(manifest, str | Path) else manifest
    rows = usable(df)
    if split is not None:
        present = sorted(rows["split"].dropna().unique())
        if split not in present:
            raise ValueError(
                f"no usable rows in split {split!r} (splits present: {present}); "
                "run `genart data split` to make train/val/test"
            )
        rows = rows[rows["split"] == split]
    if generators:
        unknown = sorted(set(generators) - set(df["generator"].dropna()))
        if unknown:
            raise ValueError(f"generators not in the manifest: {unknown}")
        rows = rows[rows["generator"].isin(generators)]
    if exclude_generators:
        rows = rows[~rows["generator"].isin(exclude_generators)]
    out = rows[["path", "label", "generator", *(c for c in ROW_PROVENANCE if c in rows)]].reset_index(
        drop=True
    )
    if classes is None or len(classes) <= 2:
        out["target"] = out["label"].map(label_to_target).astype("int64")
        return out
    index = {name: i for i, name in enumerate(classes)}
    is_ai = out["label"] == LABEL_AI
    out = out[~is_ai | out["generator"].isin(index)].reset_index(drop=True)
    out["target"] = [
        index[g] if label == LABEL_AI else 0 for g, label in zip(out["generator"], out["label"], strict=True)
    ]
    out["target"] = out["target"].astype("int64")
    return out


def _transform(spec: dict[str, Any], training: bool, augment: dict[str, Any] | None, as_uint8: bool):
    input_spec = InputSpec.from_dict(spec)
    if training:
        return train_transform(input_spec, AugmentConfig.model_validate(augment or {}), as_uint8=as_uint8)
    return eval_transform(input_spec, as_uint8=as_uint8)


def decode_batch(
    batch: dict[str, np.ndarray],
    spec: dict[str, Any],
    training: bool = False,
    augment: dict[str, Any] | None = None,
    as_uint8: bool = False,
    columns: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Read, decode and transform a batch of manifest rows into ``image`` (N, 3, H, W float32, or uint8 not
    yet normalised with ``as_uint8``: :func:`genart.data.transforms.normalize` finishes it) and labels; only
    ``columns`` of them when given.

    A file that no longer decodes (changed since it was indexed), or whose header passes the decoding budget,
    is dropped with a warning, so one bad file cannot kill a multi-hour training run.
    """
    transform = _transform(spec, training, augment, as_uint8)
    specs = [InputSpec.from_dict(spec)]
    images, keep = [], []
    for i, path in enumerate(batch["path"]):
        try:
            with open(path, "rb") as f:
                images.append(transform(decode_image(f.read(), specs, augmented=training)).numpy())
            keep.append(i)
        except (OSError, ImageDecodeError) as exc:
            log.warning("skipping %s: %s", path, exc)
    size = int(spec.get("input_size", 224))
    dtype = np.uint8 if as_uint8 else np.float32
    stacked = np.stack(images) if images else np.zeros((0, 3, size, size), dtype)
    out = {
        "image": stacked.astype(dtype, copy=False),
        "target": np.asarray(batch["target"])[keep].astype(np.int64),
        "generator": np.asarray(batch["generator"])[keep],
        "path": np.asarray(batch["path"])[keep],
    }
    return {k: out[k] for k in columns} if columns else out


def epoch_passes(
    rows: pd.DataFrame, epochs: int, seed: int | None, rows_per_epoch: int | None = None
) -> pd.DataFrame:
    """``epochs`` passes over ``rows`` one after another, each shuffled with its own seed (``seed + pass``;
    none with ``seed=None``) and cut to its first ``rows_per_epoch`` rows when given: the table a training
    dataset reads in one execution (:func:`make_dataset`, :func:`split_epochs`)."""
    passes = [
        rows if seed is None else rows.sample(frac=1.0, random_state=seed + i) for i in range(max(1, epochs))
    ]
    return pd.concat([p.iloc[:rows_per_epoch] for p in passes], ignore_index=True)


def split_epochs(batches: Iterable[dict[str, Any]], rows_per_epoch: float, passes: int) -> Iterator[Iterator]:
    """Cut one stream of batches, a dataset of ``passes`` epochs read in one execution, into its epochs: epoch
    ``e`` ends once ``(e + 1) * rows_per_epoch`` rows have gone by (a batch counts to the epoch it starts in),
    and the last pass takes what is left. Each epoch's iterator must be used up before the next is taken.

    Ray Data 2.60 runs each read of a dataset as a new execution that starts with a second of zero resource
    limits (the README's bench-data section): a train loop that reads its shard once per epoch pays it every
    epoch, one read of all the epochs pays it once. ``rows_per_epoch`` is per consumer: a rank's share.
    """
    stream, seen = iter(batches), 0

    def epoch(end: float | None) -> Iterator[dict[str, Any]]:
        nonlocal seen
        while end is None or seen < end:
            try:
                batch = next(stream)
            except StopIteration:
                return
            seen += len(batch["target"])
            yield batch

    for e in range(passes):
        yield epoch(None if e == passes - 1 else (e + 1) * rows_per_epoch)


def make_dataset(
    rows: pd.DataFrame,
    spec: InputSpec,
    training: bool = False,
    augment: AugmentConfig | None = None,
    seed: int | None = 0,
    batch_size: int = 32,
    num_cpus: float = 1.0,
    num_blocks: int | None = None,
    as_uint8: bool = False,
    epochs: int = 1,
    rows_per_epoch: int | None = None,
    columns: list[str] | None = None,
):
    """A lazy Ray Dataset streaming decoded batches from ``rows`` (see :func:`select_rows`).

    ``as_uint8``: images stay uint8, a quarter of float32's bytes through the object store and into the
    consumer; the consumer normalises them (:func:`genart.data.transforms.normalize`), as the train loop does.

    When training, the dataset holds ``epochs`` passes over ``rows`` (:func:`epoch_passes`: each shuffled with
    its own seed from ``seed``, and cut to ``rows_per_epoch`` rows when given), to be read once and cut into
    epochs by :func:`split_epochs`, as the train loop does; the train loop adds a local shuffle buffer. A
    dataset of one pass visits its blocks in a new order each time it is read. Decoding runs in Ray tasks of
    ``num_cpus`` each, in parallel across the cluster. ``columns``: the ones to keep (of ``image``,
    ``target``, ``generator`` and ``path``), dropped in the decode task before they reach the object store.
    """
    import ray
    import ray.data

    table = rows[["path", "target", "generator"]]
    if training:
        table = epoch_passes(table, epochs, seed, rows_per_epoch)
    if num_blocks:
        bounds = np.linspace(0, len(table), num_blocks + 1).astype(int)
    else:  # blocks of whole batches, and at least two per CPU where there are batches enough
        size = rows_per_block(spec, batch_size, as_uint8)
        cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else 1
        size = min(size, max(batch_size, math.ceil(len(table) / (2 * cpus) / batch_size) * batch_size))
        bounds = np.append(np.arange(0, len(table), size), len(table))
    # Split here rather than with override_num_blocks: Ray 2.60 splits with np.array_split, which returns
    # bare arrays for pandas 3 DataFrames and then fails.
    ds = ray.data.from_pandas([table.iloc[a:b] for a, b in itertools.pairwise(bounds) if b > a])
    if training and epochs <= 1:
        ds = ds.randomize_block_order()  # no seed: each read visits the blocks in a new order
    return ds.map_batches(
        decode_batch,
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=num_cpus,
        fn_kwargs={
            "spec": spec.to_dict(),
            "training": training,
            "augment": augment.model_dump(mode="json") if augment else None,
            "as_uint8": as_uint8,
            "columns": columns,
        },
    )


class ManifestDataset(Dataset):
    """A map-style PyTorch dataset over manifest rows, with the very same decode and transform."""

    def __init__(
        self,
        rows: pd.DataFrame,
        spec: InputSpec,
        training: bool = False,
        augment: AugmentConfig | None = None,
        degrade: str | None = None,
    ) -> None:
        """``degrade`` names one of :data:`genart.data.transforms.DEGRADATIONS`, applied before the
        transform."""
        if degrade is not None and degrade not in DEGRADATIONS:
            raise ValueError(f"unknown degradation {degrade!r}; known: {', '.join(DEGRADATIONS)}")
        self.degrade = DEGRADATIONS[degrade] if degrade else None
        self.paths = rows["path"].tolist()
        self.targets = rows["target"].astype("int64").tolist()
        self.generators = rows["generator"].tolist()
        self.transform = train_transform(spec, augment) if training else eval_transform(spec)
        self.specs, self.augmented = [spec], training or degrade is not None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with open(self.paths[i], "rb") as f:
            image = decode_image(f.read(), self.specs, augmented=self.augmented)
        if self.degrade is not None:
            image = self.degrade(image)
        return self.transform(image), self.targets[i]
