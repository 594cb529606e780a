"""Content-aligned fakes: real photos encoded and decoded again by TAEF2, a tiny FLUX.2-family autoencoder.

A reconstruction keeps its photo's content, framing and compression but carries a generator decoder's
up-sampling traces, so in a training pair nothing but generation traces separates the classes (the idea
of AlignedForensics, B-Free and DDA). The reconstructions form one more AI family, ``taef2``, in the same
split, source and origin as their photo, so no split and no held-out source sees a photo's twin elsewhere.

The network is written here (the upstream ``taesd.py`` is a reference only) and loads the MIT-licensed
state dicts ``taef2_encoder.pth`` / ``taef2_decoder.pth`` with ``weights_only=True``. Images are
reconstructed at native scale in a centred window of at most ``max_side`` pixels (a multiple of 8), and
saved like their photo: JPEG at the photo's estimated quality, anything else as PNG.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from genart.data.index import describe_file
from genart.data.transforms import decode_image

__all__ = ["ALIGNED_GENERATOR", "TAEF2", "align_manifest", "locate_taef2", "reconstruct"]

ALIGNED_GENERATOR = "taef2_aligned"
LATENT_CHANNELS = 32
FILES = ("taef2_encoder.pth", "taef2_decoder.pth")


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class _Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    def __init__(self, n_in: int, n_out: int, global_norm: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            _conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out)
        )
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = None
        if global_norm:  # FLUX.2's variant: a group-normalised 1x1 bottleneck added before the block
            wide = n_in * 4
            self.pool = nn.Sequential(
                nn.Conv2d(n_in, wide, 1, bias=False),
                nn.GroupNorm(4, wide),
                nn.ReLU(),
                nn.Conv2d(wide, n_in, 1, bias=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def _encoder() -> nn.Sequential:
    def down() -> nn.Conv2d:
        return _conv(64, 64, stride=2, bias=False)

    def mid() -> _Block:
        return _Block(64, 64, global_norm=True)

    return nn.Sequential(
        _conv(3, 64), _Block(64, 64),
        down(), _Block(64, 64), _Block(64, 64), _Block(64, 64),
        down(), _Block(64, 64), _Block(64, 64), _Block(64, 64),
        down(), mid(), mid(), mid(),
        _conv(64, LATENT_CHANNELS),
    )  # fmt: skip


def _decoder() -> nn.Sequential:
    def up() -> list[nn.Module]:
        return [nn.Upsample(scale_factor=2), _conv(64, 64, bias=False)]

    def mid() -> _Block:
        return _Block(64, 64, global_norm=True)

    return nn.Sequential(
        _Clamp(), _conv(LATENT_CHANNELS, 64), nn.ReLU(),
        mid(), mid(), mid(), *up(),
        _Block(64, 64), _Block(64, 64), _Block(64, 64), *up(),
        _Block(64, 64), _Block(64, 64), _Block(64, 64), *up(),
        _Block(64, 64), _conv(64, 3),
    )  # fmt: skip


def locate_taef2(weights: str | Path | None = None) -> Path:
    """The folder holding TAEF2's two state dicts: ``weights``, ``$GENART_TAEF2_DIR``, or the weights dir."""
    from genart.models.clip import weights_dir

    candidates = [Path(p) for p in (weights, os.environ.get("GENART_TAEF2_DIR")) if p]
    candidates.append(weights_dir() / "taef2")
    for folder in candidates:
        if all((folder / f).is_file() for f in FILES):
            return folder
    raise FileNotFoundError(
        f"TAEF2 weights ({', '.join(FILES)}) not found in {[str(c) for c in candidates]}. "
        "They are MIT-licensed "
        "files of github.com/madebyollin/taesd: pass --weights DIR or set GENART_TAEF2_DIR (on the project's "
        "machines: ../shared/weights/taef2)."
    )


class TAEF2(nn.Module):
    """Encoder and decoder of TAEF2; images in [0, 1], latents with 32 channels at 1/8 scale."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.decoder = _encoder(), _decoder()

    @classmethod
    def from_dir(cls, folder: str | Path | None = None) -> TAEF2:
        folder = locate_taef2(folder)
        model = cls()
        for part, name in zip((model.encoder, model.decoder), FILES, strict=True):
            part.load_state_dict(torch.load(folder / name, map_location="cpu", weights_only=True))
        return model.eval()

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(images)).clamp(0, 1)


def _window(size: tuple[int, int], max_side: int) -> tuple[int, int, int, int]:
    width, height = (min(s, max_side) // 8 * 8 for s in size)
    if width < 8 or height < 8:
        raise ValueError(f"image {size[0]}x{size[1]} is too small to reconstruct (needs 8 px a side)")
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return left, top, left + width, top + height


def reconstruct(model: TAEF2, image: Image.Image, max_side: int = 256) -> Image.Image:
    """The photo's centred native-scale window (at most ``max_side``, a multiple of 8), through TAEF2."""
    window = image.convert("RGB").crop(_window(image.size, max_side))
    tensor = torch.from_numpy(np.asarray(window, dtype=np.float32) / 255.0).permute(2, 0, 1)
    out = model(tensor[None])[0].permute(1, 2, 0).mul(255).round().byte().numpy()
    return Image.fromarray(out)


def _save_like(image: Image.Image, row: pd.Series, folder: Path) -> Path:
    stem = f"{str(row['sha256'])[:12]}_{Path(str(row['path'])).stem}"
    buffer = io.BytesIO()
    quality = row.get("jpeg_quality")
    if row.get("format") == "JPEG" and pd.notna(quality):
        image.save(buffer, "JPEG", quality=int(quality))
        path = folder / f"{stem}.jpg"
    else:
        image.save(buffer, "PNG")
        path = folder / f"{stem}.png"
    path.write_bytes(buffer.getvalue())
    return path


def _pick(photos: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """A seeded share of each source's photos (every source keeps at least one)."""
    key = "source" if "source" in photos else "generator"
    rank = photos["sha256"].map(lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    photos = photos.assign(_rank=rank).sort_values("_rank")
    picked = [g.head(max(1, round(len(g) * fraction))) for _, g in photos.groupby(key, sort=True)]
    return pd.concat(picked).drop(columns="_rank") if picked else photos.drop(columns="_rank")


def align_manifest(
    manifest: pd.DataFrame,
    out: str | Path,
    weights: str | Path | None = None,
    fraction: float = 0.2,
    max_side: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Reconstruct a ``fraction`` of the manifest's usable photos into ``out/taef2_aligned/<split>/ai/``.

    Returns the manifest's rows plus one row per reconstruction, which inherits its photo's split,
    source and origin and has family ``taef2``.
    """
    from tqdm import tqdm

    from genart.data.index import usable

    model = TAEF2.from_dir(weights)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    photos = _pick(usable(manifest)[lambda d: d["label"] == "nature"], fraction, seed)
    root = Path(out)
    rows = []
    for _, photo in tqdm(photos.iterrows(), total=len(photos), desc="align", disable=not progress):
        split = photo.get("split") if pd.notna(photo.get("split")) else "train"
        folder = root / ALIGNED_GENERATOR / str(split) / "ai"
        folder.mkdir(parents=True, exist_ok=True)
        image = decode_image(Path(photo["path"]).read_bytes())
        saved = _save_like(reconstruct(model, image, max_side), photo, folder)
        row = describe_file(str(saved), str(root))
        row.update(split=photo.get("split"), family="taef2")
        for column in ("source", "origin", "source_split"):
            if column in photo:
                row[column] = photo[column]
        rows.append(row)
    return pd.concat([manifest, pd.DataFrame(rows)], ignore_index=True)
