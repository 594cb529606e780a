import hashlib

import pandas as pd
import pytest

from genart.data.split import SPLITS, assign_splits, leaked_hashes, near_duplicates


def manifest(sizes: dict[tuple[str, str], int], source_split: str = "train") -> pd.DataFrame:
    rows = []
    for (gen, label), n in sizes.items():
        for i in range(n):
            rel = f"{gen}/{source_split}/{label}/{i}.png"
            rows.append(
                {
                    "path": "/d/" + rel,
                    "relpath": rel,
                    "generator": gen,
                    "split": source_split,
                    "label": label,
                    "readable": True,
                    "sha256": hashlib.sha256(rel.encode()).hexdigest(),
                    "dhash": f"{abs(hash(rel)) % 16**15:016x}",
                }
            )
    return pd.DataFrame(rows)


SIZES = {
    ("glide", "ai"): 101,
    ("glide", "nature"): 57,
    ("adm", "ai"): 20,
    ("adm", "nature"): 7,
    ("mj", "ai"): 1,
}


def test_split_keeps_generator_and_label_proportions_within_one() -> None:
    result = assign_splits(manifest(SIZES))
    for (gen, label), n in SIZES.items():
        counts = result.counts.loc[(gen, label)]
        for split, ratio in zip(SPLITS, (0.7, 0.15, 0.15), strict=True):
            assert abs(counts[split] - n * ratio) <= 1, (gen, label, split, counts.to_dict())
        assert counts.sum() == n


def test_split_is_deterministic_and_seeded() -> None:
    df = manifest(SIZES)
    first = assign_splits(df, seed=7).manifest["split"]
    shuffled = df.sample(frac=1.0, random_state=1)
    again = assign_splits(shuffled, seed=7).manifest["split"].reindex(first.index)
    pd.testing.assert_series_equal(first, again)
    assert not first.equals(assign_splits(df, seed=8).manifest["split"])


def test_split_never_puts_one_hash_in_two_splits() -> None:
    df = manifest({("glide", "ai"): 40, ("adm", "nature"): 40})
    # Copies of the same bytes: within a stratum, and across generator and label.
    df.loc[1:6, "sha256"] = df.loc[0, "sha256"]
    df.loc[45, "sha256"] = df.loc[10, "sha256"]
    result = assign_splits(df)
    assert result.leaked.empty
    assert leaked_hashes(result.manifest).empty
    assert result.manifest.loc[[0, 1, 2, 3, 4, 5, 6], "split"].nunique() == 1
    assert result.manifest.loc[10, "split"] == result.manifest.loc[45, "split"]


def test_leaked_hashes_finds_a_planted_leak() -> None:
    df = assign_splits(manifest({("glide", "ai"): 20})).manifest
    train, test = df.index[df["split"] == "train"][0], df.index[df["split"] == "test"][0]
    df.loc[test, "sha256"] = df.loc[train, "sha256"]
    assert set(leaked_hashes(df)["split"]) == {"train", "test"}


def test_near_duplicates_are_reported_across_splits() -> None:
    df = assign_splits(manifest({("glide", "ai"): 20})).manifest
    train, val = df.index[df["split"] == "train"][0], df.index[df["split"] == "val"][0]
    df.loc[val, "dhash"] = df.loc[train, "dhash"]
    near = near_duplicates(df)
    assert len(near) == 2 and near["crosses_splits"].all()
    df.loc[val, "dhash"] = "0000000000000000"
    df.loc[train, "dhash"] = "0000000000000000"
    assert near_duplicates(df).empty  # flat images all share the zero hash: not evidence of a copy


def test_folders_mode_keeps_the_benchmark_val_folder_as_test() -> None:
    df = pd.concat([manifest({("glide", "ai"): 40}, "train"), manifest({("glide", "ai"): 10}, "val")])
    df = df.reset_index(drop=True)
    result = assign_splits(df, mode="folders")
    out = result.manifest
    assert (out.loc[out["source_split"] == "val", "split"] == "test").all()
    train_part = out[out["source_split"] == "train"]["split"].value_counts()
    assert set(train_part.index) == {"train", "val"}
    assert abs(train_part["val"] - 40 * 0.15 / 0.85) <= 1


def test_unusable_rows_are_kept_without_a_split() -> None:
    df = manifest({("glide", "ai"): 10})
    df.loc[0, "readable"] = False
    df.loc[1, "label"] = None
    out = assign_splits(df).manifest
    assert len(out) == 10
    assert out.loc[[0, 1], "split"].isna().all() and out["split"].notna().sum() == 8


@pytest.mark.parametrize("ratios", [(0.5, 0.5, 0.5), (1.2, -0.1, -0.1), (0.7, 0.3)])
def test_split_rejects_bad_ratios(ratios) -> None:
    with pytest.raises(ValueError, match="ratios"):
        assign_splits(manifest({("glide", "ai"): 5}), ratios)


def test_split_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        assign_splits(manifest({("glide", "ai"): 5}), mode="random")  # type: ignore[arg-type]
