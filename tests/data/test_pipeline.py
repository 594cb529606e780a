from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from genart.data.pipeline import (
    ManifestDataset,
    decode_batch,
    epoch_passes,
    make_dataset,
    rows_per_block,
    select_rows,
    split_epochs,
)
from genart.data.transforms import InputSpec, normalize

SPEC = InputSpec(32, mean=(0.5,) * 3, std=(0.5,) * 3, crop_policy="crop")


def test_select_rows_filters_split_and_generators(synth_manifest: Path) -> None:
    train = select_rows(synth_manifest, "train")
    assert set(train.columns) == {
        "path",
        "label",
        "generator",
        "target",
        "sha256",
    }  # sha256 from the manifest
    assert set(train["target"]) == {0, 1} and (train["target"] == (train["label"] == "ai")).all()
    only = select_rows(synth_manifest, "train", generators=["imagenet_glide"])
    assert set(only["generator"]) == {"imagenet_glide"}
    without = select_rows(synth_manifest, "train", exclude_generators=["imagenet_glide"])
    assert len(only) + len(without) == len(train)
    with pytest.raises(ValueError, match="not in the manifest"):
        select_rows(synth_manifest, "train", generators=["nope"])


def test_select_rows_carries_provenance_from_the_manifest(synth_manifest: Path, tmp_path: Path) -> None:
    import pandas as pd

    table = pd.read_parquet(synth_manifest)
    table["family"] = table["generator"].str.upper()
    table.to_parquet(tmp_path / "m.parquet")
    rows = select_rows(tmp_path / "m.parquet", "val")
    merged = rows.merge(table[["path", "sha256", "family"]], on="path", suffixes=("", "_manifest"))
    assert len(merged) == len(rows) and (merged["sha256"] == merged["sha256_manifest"]).all()
    assert (merged["family"] == merged["family_manifest"]).all()


def test_select_rows_needs_a_split_manifest(synth_root: Path, tmp_path: Path) -> None:
    from genart.data.index import index_tree

    index_tree(synth_root / "imagenet_glide", tmp_path / "m.parquet", workers=1, progress=False)
    with pytest.raises(ValueError, match="genart data split"):
        select_rows(tmp_path / "m.parquet", "test")


def test_decode_batch_drops_files_that_no_longer_decode(tmp_path: Path, write_image) -> None:
    good = write_image(tmp_path / "good.png", size=(40, 40))
    (tmp_path / "bad.png").write_bytes(b"garbage")
    batch = {
        "path": np.array([str(good), str(tmp_path / "bad.png"), str(tmp_path / "gone.png")]),
        "target": np.array([1, 0, 1]),
        "generator": np.array(["g", "g", "g"]),
    }
    out = decode_batch(batch, SPEC.to_dict())
    assert out["image"].shape == (1, 3, 32, 32) and out["target"].tolist() == [1]


@pytest.mark.ray
def test_ray_pipeline_yields_labelled_batches_equal_to_the_torch_dataset(
    synth_manifest: Path, ray_cluster
) -> None:
    rows = select_rows(synth_manifest, "val")
    ds = make_dataset(rows, SPEC, training=False, batch_size=8)
    tensors = ds.select_columns(["image", "target"])
    batches = list(
        tensors.iter_torch_batches(batch_size=8, dtypes={"image": torch.float32, "target": torch.int64})
    )
    images = torch.cat([b["image"] for b in batches])
    assert images.shape == (len(rows), 3, 32, 32) and images.dtype == torch.float32
    assert set(torch.cat([b["target"] for b in batches]).tolist()) == {0, 1}
    # One pass that keeps the path with each image (order across passes is not guaranteed).
    torch_ds = ManifestDataset(rows, SPEC)
    by_path = {p: i for i, p in enumerate(rows["path"])}
    batch = next(iter(ds.iter_batches(batch_size=8, batch_format="numpy")))
    for image, target, path in zip(batch["image"], batch["target"], batch["path"], strict=True):
        expected, expected_target = torch_ds[by_path[path]]
        assert torch.equal(torch.from_numpy(image), expected) and target == expected_target


@pytest.mark.ray
def test_uint8_pipeline_normalised_by_the_consumer_equals_the_float_one(
    synth_manifest: Path, ray_cluster
) -> None:
    rows = select_rows(synth_manifest, "val")
    by_path = {}
    for as_uint8 in (False, True):
        ds = make_dataset(rows, SPEC, training=False, batch_size=8, as_uint8=as_uint8)
        for batch in ds.iter_batches(batch_size=8, batch_format="numpy"):
            assert batch["image"].dtype == (np.uint8 if as_uint8 else np.float32)
            images = torch.from_numpy(batch["image"])
            images = normalize(images, SPEC) if as_uint8 else images
            for path, image in zip(batch["path"], images, strict=True):
                by_path.setdefault(path, []).append(image)
    assert len(by_path) == len(rows) and all(len(pair) == 2 for pair in by_path.values())
    for float_image, normalised in by_path.values():
        torch.testing.assert_close(normalised, float_image, atol=0, rtol=0)


@pytest.mark.ray
def test_ray_training_pipeline_augments_and_shuffles(synth_manifest: Path, ray_cluster) -> None:
    rows = select_rows(synth_manifest, "train")
    ds = make_dataset(rows, SPEC, training=True, seed=1, batch_size=16)
    batch = next(iter(ds.iter_batches(batch_size=16, batch_format="numpy")))
    assert batch["image"].shape == (16, 3, 32, 32)
    assert list(batch["path"]) != list(rows["path"][:16])
    assert set(batch["generator"]) <= set(rows["generator"])


def test_epoch_passes_shuffle_each_pass_its_own_way_and_cut_each_one() -> None:
    rows = pd.DataFrame({"path": [f"{i}.png" for i in range(10)], "target": [i % 2 for i in range(10)]})
    passes = epoch_passes(rows, 3, seed=0)
    orders = [list(passes["path"][i * 10 : (i + 1) * 10]) for i in range(3)]
    assert len(passes) == 30 and all(sorted(o) == sorted(rows["path"]) for o in orders)
    assert len({tuple(o) for o in orders}) == 3 and orders[0] != list(rows["path"])
    assert list(epoch_passes(rows, 2, seed=None)["path"]) == list(rows["path"]) * 2
    cut = epoch_passes(rows, 3, seed=0, rows_per_epoch=4)
    assert len(cut) == 12 and all(cut["path"][i * 4 : (i + 1) * 4].is_unique for i in range(3))


def test_a_block_holds_whole_batches_of_about_32_mib_decoded() -> None:
    def rows(size: int, as_uint8: bool = True, batch: int = 32) -> int:
        return rows_per_block(InputSpec(size, mean=(0.5,) * 3, std=(0.5,) * 3), batch, as_uint8)

    assert (rows(224), rows(128)) == (192, 672)  # 32 MiB of uint8 images: 6 and 21 batches
    assert rows(224, as_uint8=False) == 32 and rows(448, as_uint8=False) == 32  # never less than a batch
    assert rows(224, batch=100) == 200


def test_split_epochs_ends_each_epoch_at_its_rows_and_the_last_pass_takes_the_rest() -> None:
    pulled = []

    def stream(batches: int, size: int):
        for i in range(batches):
            pulled.append(i)
            yield {"target": np.arange(size)}

    epochs = [len(list(e)) for e in split_epochs(stream(10, 3), rows_per_epoch=10, passes=3)]
    assert epochs == [4, 3, 3]  # 12 rows, then 21 (a batch counts to the epoch it starts in), then the rest
    pulled.clear()
    resumed = zip(range(2), split_epochs(stream(10, 3), rows_per_epoch=10, passes=3), strict=False)
    assert [len(list(e)) for _, e in resumed] == [4, 3] and pulled == list(range(7))  # the rest never read
    assert [len(list(e)) for e in split_epochs(stream(2, 3), rows_per_epoch=10, passes=3)] == [2, 0, 0]


@pytest.mark.ray
def test_a_training_dataset_holds_every_epoch_and_is_cut_into_them(synth_manifest: Path, ray_cluster) -> None:
    rows = select_rows(synth_manifest, "train")
    ds = make_dataset(rows, SPEC, training=True, seed=1, batch_size=16, epochs=2, columns=["path", "target"])
    stream = ds.iter_batches(batch_size=16, batch_format="numpy")
    epochs = [list(e) for e in split_epochs(stream, len(rows), passes=2)]
    assert all(set(b) == {"path", "target"} for e in epochs for b in e)  # the other columns stayed behind
    epochs = [np.concatenate([b["path"] for b in e]) for e in epochs]
    first = -(-len(rows) // 16) * 16  # whole batches: the one that crosses the end counts to the first epoch
    assert [len(e) for e in epochs] == [first, 2 * len(rows) - first]
    assert pd.Series(np.concatenate(epochs)).value_counts().eq(2).all()  # each image once per pass


def test_select_rows_gives_attribution_targets_in_class_order(synth_manifest: Path) -> None:
    classes = ["nature", "imagenet_glide", "imagenet_midjourney"]
    rows = select_rows(synth_manifest, "train", classes=classes)
    nature = rows[rows["label"] == "nature"]
    ai = rows[rows["label"] == "ai"]
    assert (nature["target"] == 0).all() and len(nature["generator"].unique()) == 7  # every photo stays
    assert set(ai["generator"]) == {"imagenet_glide", "imagenet_midjourney"}  # other fakes cannot be named
    assert (ai["target"] == ai["generator"].map({"imagenet_glide": 1, "imagenet_midjourney": 2})).all()
