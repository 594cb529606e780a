from pathlib import Path

import pandas as pd

from genart.data.index import index_tree, read_manifest
from genart.data.report import shortcut_scores, write_report
from genart.data.split import assign_splits
from tests.conftest import build_tree


def test_report_warns_when_format_predicts_the_label(tiny_tree: Path, tmp_path: Path) -> None:
    index_tree(tiny_tree, tmp_path / "m.parquet", workers=1, progress=False)
    manifest = assign_splits(read_manifest(tmp_path / "m.parquet")).manifest
    result = write_report(manifest, tmp_path / "report")
    text = result.markdown.read_text()
    assert {p.name for p in result.plots} == {"counts.png", "sizes.png", "shortcuts.png"}
    assert all(p.stat().st_size > 5000 for p in result.plots)
    assert any(w.startswith("format alone predicts the label in the pooled data") for w in result.warnings)
    for heading in (
        "## Counts",
        "## Image sizes",
        "## Formats and the label",
        "## Unreadable",
        "## Duplicates",
    ):
        assert heading in text
    assert "sha256 in more than one split: 0" in text


def test_shortcut_scores_are_at_chance_when_formats_match(tmp_path: Path) -> None:
    root = build_tree(tmp_path / "t", per_folder=6)
    for jpg in root.rglob("*.jpg"):  # re-save nature as PNG: the format no longer tells
        from PIL import Image

        with Image.open(jpg) as image:
            image.save(jpg.with_suffix(".png"))
        jpg.unlink()
    index_tree(root, tmp_path / "m.parquet", workers=1, progress=False)
    scores = shortcut_scores(read_manifest(tmp_path / "m.parquet"))
    assert scores.loc["all", "format"] <= 0.6
    result = write_report(read_manifest(tmp_path / "m.parquet"), tmp_path / "r")
    assert not any(w.startswith("format") for w in result.warnings)


def test_report_lists_corrupt_files_and_handles_empty_manifests(tmp_path: Path, write_image) -> None:
    root = tmp_path / "r"
    write_image(root / "g" / "train" / "ai" / "ok.png")
    (root / "g" / "train" / "ai" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    index_tree(root, tmp_path / "m.parquet", workers=1, progress=False)
    text = write_report(read_manifest(tmp_path / "m.parquet"), tmp_path / "out").markdown.read_text()
    assert "g/train/ai/bad.png" in text
    empty = read_manifest(tmp_path / "m.parquet").iloc[0:0]
    assert write_report(empty, tmp_path / "empty").warnings == ["no usable images"]


def test_shortcut_scores_by_generator_skip_single_label_folders() -> None:
    rows = pd.DataFrame(
        {
            "generator": ["a"] * 8 + ["b"] * 4,
            "label": ["ai", "nature"] * 4 + ["ai"] * 4,
            "readable": True,
            "format": ["PNG", "JPEG"] * 4 + ["PNG"] * 4,
            "width": 64,
            "height": 64,
            "bytes": range(12),
            "jpeg_quality": None,
        }
    )
    scores = shortcut_scores(rows, by_generator=True)
    assert list(scores.index) == ["a"]
    assert scores.loc["a", "format"] == 1.0
