import os
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from genart.data.index import (
    MANIFEST_SCHEMA,
    describe_file,
    estimate_jpeg_quality,
    index_tree,
    read_manifest,
    sniff_format,
    usable,
)
from tests.conftest import image_bytes, png_bomb


def _index(root: Path, tmp_path: Path, workers: int = 1) -> pd.DataFrame:
    index_tree(root, tmp_path / "m.parquet", workers=workers, progress=False)
    return read_manifest(tmp_path / "m.parquet").set_index("relpath")


def test_index_lists_every_file_with_layout_and_metadata(tiny_tree: Path, tmp_path: Path) -> None:
    df = _index(tiny_tree, tmp_path)
    assert len(df) == 2 * 2 * 2 * 4
    assert list(read_manifest(tmp_path / "m.parquet").columns) == MANIFEST_SCHEMA.names
    row = df.loc["imagenet_glide/train/nature/0.jpg"]
    assert (row.generator, row.split, row.label, row.format, row.readable) == (
        "imagenet_glide", "train", "nature", "JPEG", True
    )  # fmt: skip
    assert (row.width, row.height) == (40, 36)
    assert len(row.sha256) == 64 and len(row.dhash) == 16
    assert 60 <= row.jpeg_quality <= 90  # PIL's default quality is 75
    assert df["format"].isin(["JPEG", "PNG"]).all()


@pytest.mark.parametrize("workers", [1, 2])
def test_index_survives_every_broken_file_kind(tmp_path: Path, write_image, workers: int) -> None:
    root = tmp_path / "root"
    gen = root / "imagenet_ai_0424_wukong" / "train"
    good = write_image(gen / "ai" / "good.png")
    jpeg = image_bytes((64, 64), "JPEG", seed=3)
    (gen / "ai").mkdir(parents=True, exist_ok=True)
    (gen / "ai" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    png = image_bytes((64, 64), "PNG", seed=4)
    (gen / "ai" / "truncated.png").write_bytes(png[: len(png) // 2])
    (gen / "ai" / "empty.png").write_bytes(b"")
    (gen / "ai" / "not-an-image.png").write_text("hello, I am text")
    (gen / "ai" / "webp-named.png").write_bytes(image_bytes(fmt="WEBP"))
    (gen / "ai" / "link.png").symlink_to(good)
    (gen / "ai" / "dangling.png").symlink_to(gen / "ai" / "missing.png")
    write_image(gen / "nature" / "Ünïcødé 写真.JPG", fmt="JPEG")
    write_image(gen / "nature" / "cmyk.jpg", fmt="JPEG", mode="CMYK")
    write_image(gen / "nature" / "grey.png", mode="L")
    write_image(gen / "nature" / "palette.gif", fmt="GIF", mode="P")
    write_image(gen / "nature" / "alpha.png", mode="RGBA")
    rotated = Image.new("RGB", (40, 20))
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(gen / "nature" / "rotated.jpg", exif=exif)
    (gen / "nature" / "bomb.png").write_bytes(png_bomb())
    write_image(root / "brand_new_generator" / "val" / "ai" / "x.png")
    write_image(root / "loose.png")
    (root / "NOTES.txt").write_text("not an image")

    df = _index(root, tmp_path, workers=workers)

    assert len(df) == 17  # every image-like file is a row; NOTES.txt is listed as skipped
    assert read_manifest(tmp_path / "m.parquet").attrs["genart"]["skipped"] == ["NOTES.txt"]
    wukon = df.loc["imagenet_ai_0424_wukong/train/ai/good.png"]
    assert wukon.generator == "imagenet_ai_0424_wukon" and wukon.readable
    unreadable = set(df.index[~df["readable"]])
    assert {p.split("/")[-1] for p in unreadable} == {
        "truncated.jpg", "truncated.png", "empty.png", "not-an-image.png", "dangling.png", "bomb.png"
    }  # fmt: skip
    assert df.filter(like="empty.png", axis=0)["error"].item() == "empty file"
    bomb_error = df.filter(like="bomb.png", axis=0)["error"].item()
    assert "ImageBudgetError" in bomb_error and "max_pixels" in bomb_error
    assert df.filter(like="truncated.jpg", axis=0)["format"].item() == "JPEG"  # sniffed from the magic bytes
    webp = df.filter(like="webp-named", axis=0).iloc[0]
    assert (webp.format, webp.ext_format, webp.ext_mismatch) == ("WEBP", "PNG", True)
    assert df.filter(like="link.png", axis=0)["is_symlink"].item()
    assert df.filter(like="Ünïcødé", axis=0)["readable"].item()
    rot = df.filter(like="rotated", axis=0).iloc[0]
    assert (rot.orientation, rot.width, rot.height) == (6, 20, 40)
    modes = df.set_index(df.index.str.rsplit("/", n=1).str[-1])["mode"]
    assert (modes["cmyk.jpg"], modes["grey.png"], modes["palette.gif"], modes["alpha.png"]) == (
        "CMYK",
        "L",
        "P",
        "RGBA",
    )
    assert df.loc["brand_new_generator/val/ai/x.png", "generator"] == "brand_new_generator"
    assert pd.isna(df.loc["loose.png", "label"])
    assert "loose.png" not in set(usable(df.reset_index())["relpath"])


def test_index_refuses_a_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a directory"):
        index_tree(tmp_path / "nope", tmp_path / "m.parquet", progress=False)


def test_describe_file_reports_unreadable_path(tmp_path: Path) -> None:
    row = describe_file(str(tmp_path / "gen/train/ai/missing.png"), str(tmp_path))
    assert not row["readable"] and row["error"].startswith("FileNotFoundError")


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\xff\xd8\xff\xe0", "JPEG"),
        (b"\x89PNG\r\n\x1a\n", "PNG"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"GIF89a", "GIF"),
        (b"<svg xmlns=", None),
        (b"", None),
    ],
)
def test_sniff_format_reads_magic_bytes(head: bytes, expected: str | None) -> None:
    assert sniff_format(head) == expected


@pytest.mark.parametrize("quality", [50, 75, 90, 95])
def test_jpeg_quality_estimate_is_close(tmp_path: Path, write_image, quality: int) -> None:
    path = write_image(tmp_path / "q.jpg", fmt="JPEG", quality=quality)
    with Image.open(path) as image:
        assert abs(estimate_jpeg_quality(image.quantization) - quality) <= 2
    assert estimate_jpeg_quality(None) is None


def test_index_output_is_independent_of_worker_count(tiny_tree: Path, tmp_path: Path) -> None:
    one = _index(tiny_tree, tmp_path / "a", workers=1)
    two = _index(tiny_tree, tmp_path / "b", workers=2)
    pd.testing.assert_frame_equal(one, two)
    assert os.path.isabs(one["path"].iloc[0])
