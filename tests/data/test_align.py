"""Content-aligned fakes: the TAEF2 network, reconstruction windows and the aligned manifest."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from PIL import Image

from genart.data.align import ALIGNED_GENERATOR, FILES, TAEF2, align_manifest, locate_taef2, reconstruct
from genart.data.index import describe_file


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    model = TAEF2()
    folder = tmp_path / "taef2"
    folder.mkdir()
    torch.save(model.encoder.state_dict(), folder / FILES[0])
    torch.save(model.decoder.state_dict(), folder / FILES[1])
    return folder


def test_state_dict_layout_matches_the_upstream_files(weights):
    # the upstream checkpoints index an nn.Sequential: 15 encoder and 20 decoder children
    assert {k.split(".")[0] for k in TAEF2().encoder.state_dict()} == {str(i) for i in range(15)}
    assert {k.split(".")[0] for k in TAEF2().decoder.state_dict()} == {str(i) for i in range(20)} - {
        "0",
        "2",
        "6",
        "11",
        "16",
    }  # Clamp, ReLU and Upsample hold no weights
    assert TAEF2.from_dir(weights).encoder[14].out_channels == 32


def test_reconstruction_keeps_a_native_window(weights):
    model = TAEF2.from_dir(weights)
    out = reconstruct(model, Image.new("RGB", (300, 100), "gray"), max_side=256)
    assert out.size == (256, 96)  # multiples of 8, at most max_side, no resampling
    with pytest.raises(ValueError, match="too small"):
        reconstruct(model, Image.new("RGB", (5, 100)), max_side=256)


def test_missing_weights_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("GENART_TAEF2_DIR", raising=False)
    monkeypatch.setenv("GENART_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="GENART_TAEF2_DIR"):
        locate_taef2(tmp_path / "nowhere")


def test_aligned_rows_inherit_split_and_source(tmp_path, weights, write_image):
    rows = []
    for i, split in enumerate(["train", "test", "val", "train"]):
        path = write_image(tmp_path / "src" / "real_a" / "train" / "nature" / f"{i}.jpg", size=(64, 48),
                           fmt="JPEG", seed=i, quality=80)  # fmt: skip
        row = describe_file(str(path), str(tmp_path / "src"))
        row.update(split=split, source="repo/a", origin=f"repo/a:{i}.jpg", family="real")
        rows.append(row)
    manifest = pd.DataFrame(rows)
    out = align_manifest(manifest, tmp_path / "aligned", weights, fraction=0.5, progress=False)
    new = out[out["generator"] == ALIGNED_GENERATOR]
    assert len(new) == 2 and (new["label"] == "ai").all() and (new["family"] == "taef2").all()
    photo = manifest.set_index("origin")
    for _, row in new.iterrows():
        assert row["split"] == photo.loc[row["origin"], "split"]
        assert row["format"] == "JPEG" and row["readable"]
