"""Scanning a dataset root into a manifest: one Parquet row per file, with the real format sniffed from bytes.

The scan walks the tree lazily and hashes/decodes files in a bounded process pool, writing Parquet in row
groups, so memory stays flat however large the tree is. Broken files are rows with ``readable=False`` and
an ``error``, never exceptions and never silently dropped; files that are not images at all (READMEs,
CSVs) are counted as ``skipped`` and listed in the Parquet metadata.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm.auto import tqdm

from genart.config import DecodeLimits
from genart.data.headers import check_budget, open_image, read_header
from genart.data.layout import IMAGE_EXTENSIONS, parse_path

__all__ = [
    "MANIFEST_SCHEMA",
    "IndexSummary",
    "describe_file",
    "estimate_jpeg_quality",
    "index_roots",
    "index_tree",
    "process_pool",
    "read_manifest",
    "sniff_format",
    "training_data_summary",
    "usable",
    "write_manifest",
]

MANIFEST_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("relpath", pa.string()),
        ("generator", pa.string()),
        ("split", pa.string()),
        ("label", pa.string()),
        ("ext", pa.string()),
        ("ext_format", pa.string()),
        ("format", pa.string()),
        ("ext_mismatch", pa.bool_()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("mode", pa.string()),
        ("orientation", pa.int8()),
        ("jpeg_quality", pa.int16()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("dhash", pa.string()),
        ("is_symlink", pa.bool_()),
        ("readable", pa.bool_()),
        ("error", pa.string()),
    ]
)

_EXT_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".gif": "GIF",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".heic": "HEIF",
    ".avif": "AVIF",
}

# Magic numbers, so that the format is known even when PIL cannot open the file (truncated, zero-length).
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"WEBP", 8, "WEBP"),
    (b"ftypavif", 4, "AVIF"),
    (b"ftypheic", 4, "HEIF"),
)

# The IJG (libjpeg) standard luminance table at quality 50, the reference for quality estimates.
_IJG_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip

_ROW_GROUP = 512


@dataclass
class IndexSummary:
    """What a scan found, for the CLI and the report."""

    manifest: Path
    files: int = 0
    unreadable: int = 0
    ext_mismatch: int = 0
    unlabelled: int = 0
    skipped: list[str] = field(default_factory=list)


def sniff_format(head: bytes) -> str | None:
    """The container format from the first bytes of a file, whatever its extension says."""
    for magic, offset, name in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    return None


def estimate_jpeg_quality(quantization: dict[int, list[int]] | None) -> int | None:
    """Estimate the IJG quality (1-100) a JPEG was saved at from its luminance quantisation table."""
    if not quantization or 0 not in quantization:
        return None
    table = list(quantization[0])
    if len(table) != 64:
        return None
    # The ratio of sums does not depend on the order PIL returns the table in (zig-zag or natural).
    scale = 100.0 * sum(table) / sum(_IJG_LUMA)
    quality = (200.0 - scale) / 2.0 if scale <= 100.0 else 5000.0 / scale
    return int(max(1, min(100, round(quality))))


def _dhash(image: Image.Image) -> str:
    """A 64-bit difference hash: near-identical re-encodes and rescales share it (or differ in few bits)."""
    small = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (small[:, 1:] < small[:, :-1]).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def describe_file(path: str, root: str) -> dict[str, object]:
    """One manifest row for one file. Never raises for a bad file: the error goes into the row."""
    relpath = os.path.relpath(path, root)
    parsed = parse_path(relpath, root_name=os.path.basename(os.path.normpath(root)))
    ext = os.path.splitext(path)[1].lower()
    row: dict[str, object] = {
        "path": path,
        "relpath": relpath,
        "generator": parsed.generator,
        "split": parsed.split,
        "label": parsed.label,
        "ext": ext,
        "ext_format": _EXT_FORMATS.get(ext),
        "format": None,
        "ext_mismatch": False,
        "width": None,
        "height": None,
        "mode": None,
        "orientation": None,
        "jpeg_quality": None,
        "bytes": None,
        "sha256": None,
        "dhash": None,
        "is_symlink": os.path.islink(path),
        "readable": False,
        "error": None,
    }
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        row["error"] = f"{type(exc).__name__}: {exc.strerror or exc}"
        return row
    row["bytes"] = len(data)
    row["sha256"] = hashlib.sha256(data).hexdigest()
    if not data:
        row["error"] = "empty file"
        return row
    row["format"] = sniff_format(data[:32])
    try:
        limits = DecodeLimits()
        with open_image(data, limits) as image:
            header = read_header(image, data)
            row["format"] = image.format or row["format"]
            row["mode"] = image.mode
            row["orientation"] = header.orientation
            # EXIF orientations 5-8 rotate by 90 degrees: report the size a viewer (and decode) shows.
            row["width"], row["height"] = header.upright_size
            if image.format == "JPEG":
                row["jpeg_quality"] = estimate_jpeg_quality(getattr(image, "quantization", None))
                image.draft(
                    "RGB", (64, 64)
                )  # DCT scaling: the full stream is read, at a fraction of the cost
            check_budget(header, limits, decoded_size=image.size)
            image.load()
            row["dhash"] = _dhash(image)
            row["readable"] = True
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a decoder bug must not stop a scan of 100k files
        row["error"] = f"{type(exc).__name__}: {exc}"
    if row["format"] and row["ext_format"]:
        row["ext_mismatch"] = row["format"] != row["ext_format"]
    return row


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool that is safe to start from any caller.

    It uses forkserver rather than fork: the caller may already run Ray (gRPC threads) or torch, and forking a
    process with live threads can hang the children.
    """
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"))


def _describe_chunk(paths: list[str], root: str) -> list[dict[str, object]]:
    return [describe_file(p, root) for p in paths]


def _walk(root: str, skipped: list[str]) -> Iterator[str]:
    """Files under root in a stable order, lazily. Directory symlinks are not followed (no cycles)."""
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            skipped.append(os.path.relpath(directory, root) + os.sep)
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.path)
            elif _looks_like_image(entry):
                yield entry.path
            else:
                skipped.append(os.path.relpath(entry.path, root))
        stack.extend(reversed(subdirs))


def _looks_like_image(entry: os.DirEntry[str]) -> bool:
    if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
        return True
    if entry.is_symlink() and not os.path.exists(entry.path):
        return False
    try:
        with open(entry.path, "rb") as f:
            return sniff_format(f.read(32)) is not None
    except OSError:
        return False


def _chunks(paths: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for path in paths:
        chunk.append(path)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def index_tree(
    root: str | Path,
    out: str | Path,
    workers: int | None = None,
    chunk_size: int = 64,
    progress: bool = True,
) -> IndexSummary:
    """Scan ``root`` and write its manifest to ``out`` (Parquet). Returns counts of what was found."""
    root_str = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root_str):
        raise FileNotFoundError(f"dataset root {root_str!r} is not a directory")
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    summary = IndexSummary(manifest=out_path)
    total = sum(1 for _ in _walk(root_str, []))

    tmp = out_path.with_suffix(out_path.suffix + ".partial")
    writer = pq.ParquetWriter(tmp, MANIFEST_SCHEMA)
    buffer: list[dict[str, object]] = []

    def flush(rows: list[dict[str, object]]) -> None:
        for row in rows:
            summary.files += 1
            summary.unreadable += not row["readable"]
            summary.ext_mismatch += bool(row["ext_mismatch"])
            summary.unlabelled += row["label"] is None or row["generator"] is None
        buffer.extend(rows)
        if len(buffer) >= _ROW_GROUP:
            writer.write_table(pa.Table.from_pylist(buffer, schema=MANIFEST_SCHEMA))
            buffer.clear()

    bar = tqdm(total=total, unit="img", desc="index", disable=not progress)
    try:
        chunks = _chunks(_walk(root_str, summary.skipped), chunk_size)
        if workers == 1:
            for chunk in chunks:
                flush(_describe_chunk(chunk, root_str))
                bar.update(len(chunk))
        else:
            with process_pool(workers) as pool:
                in_flight: deque[Future[list[dict[str, object]]]] = deque()
                for chunk in chunks:
                    in_flight.append(pool.submit(_describe_chunk, chunk, root_str))
                    if len(in_flight) >= 4 * workers:  # bounded: memory does not grow with the tree
                        rows = in_flight.popleft().result()
                        flush(rows)
                        bar.update(len(rows))
                while in_flight:
                    rows = in_flight.popleft().result()
                    flush(rows)
                    bar.update(len(rows))
        if buffer:
            writer.write_table(pa.Table.from_pylist(buffer, schema=MANIFEST_SCHEMA))
    finally:
        bar.close()
        writer.close()
    _set_metadata(
        tmp, {"root": root_str, "skipped": summary.skipped[:1000], "skipped_count": len(summary.skipped)}
    )
    os.replace(tmp, out_path)
    return summary


def index_roots(
    roots: list[str | Path],
    out: str | Path,
    workers: int | None = None,
    provenance: list[str | Path] | None = None,
    progress: bool = True,
) -> IndexSummary:
    """:func:`index_tree` over several roots into one manifest, with provenance columns joined by sha256."""
    if len(roots) == 1 and not provenance:
        return index_tree(roots[0], out, workers=workers, progress=progress)
    from genart.data.provenance import attach_provenance

    out_path = Path(out)
    frames, summary = [], IndexSummary(manifest=out_path)
    for i, root in enumerate(roots):
        part = out_path.with_suffix(f".{i}.partial")
        one = index_tree(root, part, workers=workers, progress=progress)
        frames.append(read_manifest(part))
        part.unlink()
        for count in ("files", "unreadable", "ext_mismatch", "unlabelled"):
            setattr(summary, count, getattr(summary, count) + getattr(one, count))
        summary.skipped.extend(one.skipped)
    manifest = pd.concat(frames, ignore_index=True)
    if provenance:
        manifest = attach_provenance(manifest, provenance)
    manifest.attrs["genart"] = {
        "roots": [os.path.abspath(os.fspath(r)) for r in roots],
        "provenance": [os.path.abspath(os.fspath(p)) for p in provenance or []],
        "skipped": summary.skipped[:1000],
        "skipped_count": len(summary.skipped),
    }
    write_manifest(manifest, out_path)
    return summary


def _write_with_metadata(table: pa.Table, info: dict[str, object], path: Path) -> None:
    pq.write_table(
        table.replace_schema_metadata({**(table.schema.metadata or {}), b"genart": json.dumps(info)}), path
    )


def _set_metadata(path: Path, info: dict[str, object]) -> None:
    _write_with_metadata(pq.read_table(path), info, path)


def write_manifest(manifest: pd.DataFrame, path: str | Path) -> Path:
    """Write a manifest to Parquet, keeping the scan's metadata (``df.attrs['genart']``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(manifest, preserve_index=False)
    _write_with_metadata(table, manifest.attrs.get("genart", {}), path)
    return path


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Load a manifest; ``df.attrs['genart']`` holds the scan's metadata (root, skipped files)."""
    table = pq.read_table(path)
    df = table.to_pandas()
    raw = (table.schema.metadata or {}).get(b"genart")
    df.attrs["genart"] = json.loads(raw) if raw else {}
    return df


def training_data_summary(manifest: str | Path, rows: pd.DataFrame) -> dict[str, object]:
    """What a model was trained on, for its artefact and ``/models``: the manifest's name, how many images,
    which families (or generator folders), and whether it is genart's generated sample data."""
    table = read_manifest(manifest)
    info = table.attrs.get("genart", {})
    roots = info.get("roots") or [info.get("root")]
    generated = any(r and (Path(r) / "SYNTH.md").exists() for r in roots)
    if "family" not in rows and "family" in table:
        rows = rows.merge(table[["path", "family"]].drop_duplicates("path"), on="path", how="left")
    families = rows["family"].fillna(rows["generator"]) if "family" in rows else rows["generator"]
    name = Path(manifest).name.removesuffix(".parquet").removesuffix(".split").removesuffix(".aligned")
    return {"data": name, "images": len(rows), "families": sorted(families.dropna().astype(str).unique()),
            "generated": generated}  # fmt: skip


def usable(manifest: pd.DataFrame) -> pd.DataFrame:
    """The rows a model can learn from: decodable, with a generator and a label."""
    mask = manifest["readable"].fillna(False).astype(bool)
    mask &= manifest["label"].notna() & manifest["generator"].notna()
    return manifest[mask]
