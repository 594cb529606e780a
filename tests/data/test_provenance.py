"""Provenance join, grouped splits and multi-root indexing."""

from __future__ import annotations

import pandas as pd

from genart.data.index import index_roots, read_manifest
from genart.data.provenance import attach_provenance, read_provenance
from genart.data.split import assign_splits


def _csv(tmp_path, rows):
    path = tmp_path / "prov.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_family_source_and_origin_come_from_the_csv(tmp_path):
    csv = _csv(tmp_path, [
        {"repo": "a/x", "path": "grid.jpg", "sha256": "s1", "label": "ai", "family": "flux", "source": "a/x"},
        {"repo": "b/y", "path": "p.jpg", "sha256": "s2", "label": "nature", "family": "", "source": "b/y"},
    ])  # fmt: skip
    table = read_provenance(csv)
    assert table.set_index("sha256").loc["s1", "family"] == "flux"
    assert table.set_index("sha256").loc["s2", "family"] == "real"  # photos are one family
    assert table.set_index("sha256").loc["s1", "origin"] == "a/x:grid.jpg"
    manifest = pd.DataFrame(
        {"sha256": ["s1", "s3"], "generator": ["flux_a", "sdxl_b"], "label": ["ai", "ai"]}
    )
    joined = attach_provenance(manifest, [csv])
    assert list(joined["family"]) == ["flux", "sdxl_b"]  # unmatched rows fall back to their folder
    assert pd.isna(joined.loc[1, "origin"])


def test_crops_of_one_picture_stay_in_one_split():
    rows = []
    for picture in range(30):
        for tile in range(4):
            rows.append({"path": f"/d/{picture}_{tile}.jpg", "relpath": f"{picture}_{tile}.jpg",
                         "dhash": None, "generator": "flux_a", "label": "ai", "sha256": f"{picture}-{tile}",
                         "origin": f"repo:grid{picture}.jpg", "readable": True,
                         "split": "train"})  # fmt: skip
    result = assign_splits(pd.DataFrame(rows))
    per_origin = result.manifest.groupby("origin")["split"].nunique()
    assert (per_origin == 1).all()
    assert set(result.manifest["split"]) == {"train", "val", "test"}


def test_index_roots_joins_several_roots(tmp_path, write_image):
    for root, gen, label, seed in (("r1", "gen_a", "ai", 0), ("r2", "real_b", "nature", 1)):
        write_image(tmp_path / root / gen / "train" / label / "x.png", seed=seed)
    csv = _csv(tmp_path, [{"repo": "o/r", "path": "x.png", "sha256": "nope", "label": "ai", "family": "f"}])
    summary = index_roots([tmp_path / "r1", tmp_path / "r2"], tmp_path / "m.parquet", workers=1,
                          provenance=[csv], progress=False)  # fmt: skip
    manifest = read_manifest(tmp_path / "m.parquet")
    assert summary.files == 2 and len(manifest) == 2
    assert sorted(manifest["family"]) == ["gen_a", "real"]
    assert len(manifest.attrs["genart"]["roots"]) == 2
