"""Deterministic stratified splits, and the leakage checks that keep them honest.

Files are grouped by sha256 before they are dealt out, so byte-identical copies always land in the same
split. Within each generator x label stratum the groups are ordered by a seeded hash, so a split depends
only on the files and the seed, never on scan order or worker count.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from genart.data.index import usable

__all__ = ["SPLITS", "SplitResult", "assign_splits", "group_keys", "leaked_hashes", "near_duplicates"]

SPLITS: tuple[str, str, str] = ("train", "val", "test")
SplitMode = Literal["stratified", "folders"]
_FLAT_DHASHES = {"0000000000000000", "ffffffffffffffff"}  # flat images all hash alike: not duplicates


@dataclass
class SplitResult:
    """A manifest with ``split`` assigned (the folder's split kept as ``source_split``) and what was found."""

    manifest: pd.DataFrame
    counts: pd.DataFrame
    leaked: pd.DataFrame
    near_duplicates: pd.DataFrame


def _rank(key: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def _targets(n: int, ratios: tuple[float, ...]) -> list[int]:
    """Integer counts per split that sum to ``n``, each within 1 of ``n * ratio`` (largest remainder)."""
    exact = [n * r for r in ratios]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(ratios)), key=lambda i: (exact[i] - counts[i], -i), reverse=True)
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _deal(
    groups: pd.DataFrame, names: tuple[str, ...], ratios: tuple[float, ...], seed: int
) -> dict[str, str]:
    """Deal sha256 groups of one stratum into splits by seeded order, filling each split to its target."""
    groups = groups.assign(_rank=[_rank(h, seed) for h in groups["sha256"]]).sort_values("_rank")
    targets = _targets(int(groups["n"].sum()), ratios)
    assignment: dict[str, str] = {}
    filled = [0] * len(names)
    slot = 0
    for sha, n in zip(groups["sha256"], groups["n"], strict=True):
        while slot < len(names) - 1 and filled[slot] >= targets[slot]:
            slot += 1
        assignment[sha] = names[slot]
        filled[slot] += int(n)
    return assignment


def group_keys(rows: pd.DataFrame) -> pd.Series:
    """What stays in one split: the file's ``origin`` (crops of one picture) where known, else its sha256."""
    if "origin" in rows:
        return rows["origin"].where(rows["origin"].notna(), rows["sha256"]).astype(str)
    return rows["sha256"].astype(str)


def _stratified(
    rows: pd.DataFrame, names: tuple[str, ...], ratios: tuple[float, ...], seed: int
) -> pd.Series:
    assignment: dict[str, str] = {}
    keyed = rows.assign(_key=group_keys(rows))
    # A group seen in several strata is dealt once, with the first stratum (in sorted order) it appears in.
    first = keyed.sort_values(["generator", "label", "_key"]).drop_duplicates("_key")
    for _, stratum in first.groupby(["generator", "label"], sort=True):
        sizes = keyed[keyed["_key"].isin(stratum["_key"])].groupby("_key").size()
        groups = pd.DataFrame({"sha256": sizes.index, "n": sizes.to_numpy()})
        assignment.update(_deal(groups, names, ratios, seed))
    return keyed["_key"].map(assignment)


def assign_splits(
    manifest: pd.DataFrame,
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    mode: SplitMode = "stratified",
) -> SplitResult:
    """Assign every usable row to train/val/test.

    ``stratified`` deals each generator x label stratum 70/15/15 (by default). ``folders`` keeps the
    dataset's own folders for comparability with published results: its ``val`` folders become ``test``,
    and a stratified share of its ``train`` folders becomes ``val``. Unusable rows keep ``split=None``.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"split ratios must be three non-negative numbers that sum to 1, got {ratios}")
    if mode not in ("stratified", "folders"):
        raise ValueError(f"unknown split mode {mode!r}: use 'stratified' or 'folders'")
    out = manifest.copy()
    if "source_split" not in out:
        out["source_split"] = out["split"]
    out["split"] = pd.Series([None] * len(out), index=out.index, dtype="object")
    rows = usable(out)
    if mode == "stratified":
        out.loc[rows.index, "split"] = _stratified(rows, SPLITS, ratios, seed)
    else:
        keys = group_keys(rows)
        held_out = set(keys[rows["source_split"].isin(["val", "test"])])
        test_rows = rows[keys.isin(held_out)]
        out.loc[test_rows.index, "split"] = "test"
        train_rows = rows.drop(test_rows.index)
        val_share = ratios[1] / (ratios[0] + ratios[1]) if ratios[0] + ratios[1] > 0 else 0.0
        out.loc[train_rows.index, "split"] = _stratified(
            train_rows, ("train", "val"), (1.0 - val_share, val_share), seed
        )
    assigned = out[out["split"].notna()]
    counts = (
        assigned.groupby(["generator", "label", "split"]).size().unstack("split", fill_value=0)
        .reindex(columns=list(SPLITS), fill_value=0)
    )  # fmt: skip
    return SplitResult(
        manifest=out, counts=counts, leaked=leaked_hashes(out), near_duplicates=near_duplicates(out)
    )


def leaked_hashes(manifest: pd.DataFrame) -> pd.DataFrame:
    """sha256 values that appear in more than one split (should always be empty)."""
    assigned = manifest[manifest["split"].notna()]
    per_hash = assigned.groupby("sha256")["split"].nunique()
    leaked = per_hash[per_hash > 1].index
    return assigned[assigned["sha256"].isin(leaked)][["sha256", "split", "relpath"]].sort_values("sha256")


def near_duplicates(manifest: pd.DataFrame) -> pd.DataFrame:
    """Files that are not byte-identical but share a difference hash: re-encodes, rescales, light edits.

    Reported with their splits, because a near-copy across train and test inflates test scores.
    """
    cols = ["dhash", "sha256", "relpath", "generator", "label", "split"]
    rows = manifest[manifest["dhash"].notna() & ~manifest["dhash"].isin(_FLAT_DHASHES)]
    distinct = rows.drop_duplicates("sha256")
    per_dhash = distinct.groupby("dhash")["sha256"].nunique()
    shared = per_dhash[per_dhash > 1].index
    dup = distinct[distinct["dhash"].isin(shared)][cols].sort_values(["dhash", "relpath"])
    crosses = dup.groupby("dhash")["split"].transform(lambda s: s.dropna().nunique() > 1)
    return dup.assign(crosses_splits=crosses.astype(bool))
