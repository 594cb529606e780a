"""The artefact's record of its data: which files were in which split."""

from pathlib import Path

import pandas as pd

from genart.data.index import read_manifest
from genart.data.pipeline import select_rows
from genart.models.artifact import manifest_fingerprint, split_fingerprint


def test_split_fingerprint_is_the_manifests_fingerprint_of_the_rows_fitted_on(synth_manifest: Path) -> None:
    rows = {split: select_rows(synth_manifest, split) for split in ("train", "val")}
    manifest = read_manifest(synth_manifest)
    fitted_on = manifest[manifest["path"].isin(pd.concat(rows.values())["path"])]
    assert split_fingerprint(rows) == manifest_fingerprint(fitted_on)
    moved = {"train": rows["train"].iloc[1:], "val": pd.concat([rows["val"], rows["train"].iloc[:1]])}
    assert split_fingerprint(moved) != split_fingerprint(rows)  # same files, another split: other data
