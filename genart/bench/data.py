"""Data benchmark: the Ray Data pipeline against a PyTorch DataLoader, same files, transform and processes.

Both sides decode and augment the same manifest rows with :mod:`genart.data.transforms`, with the same
number of processes (Ray tasks of one CPU each on a local Ray of ``--processes`` CPUs; DataLoader workers).
Each side runs ``--epochs`` passes; the first pass includes start-up, later passes are steady state.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from genart.bench.common import machine, write_results
from genart.data.index import index_tree, read_manifest
from genart.data.pipeline import ManifestDataset, make_dataset, select_rows
from genart.data.split import assign_splits
from genart.data.synth import synthesize
from genart.data.transforms import InputSpec


def _torch_epochs(
    rows: pd.DataFrame, spec: InputSpec, processes: int, batch: int, epochs: int
) -> list[float]:
    from torch.utils.data import DataLoader

    loader = DataLoader(
        ManifestDataset(rows, spec, training=True),
        batch_size=batch,
        shuffle=True,
        num_workers=processes,
        persistent_workers=processes > 0,
    )
    rates = []
    for _ in range(epochs):
        start, seen = time.perf_counter(), 0
        for images, _targets in loader:
            seen += len(images)
        rates.append(seen / (time.perf_counter() - start))
    return rates


def _ray_epochs(
    rows: pd.DataFrame, spec: InputSpec, processes: int, batch: int, epochs: int, blocks: int | None = None
) -> list[float]:
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=processes, include_dashboard=False, log_to_driver=False)
    try:
        ds = make_dataset(rows, spec, training=True, batch_size=batch, num_cpus=1, num_blocks=blocks)
        rates = []
        for _ in range(epochs):
            start, seen = time.perf_counter(), 0
            for b in ds.iter_batches(batch_size=batch, batch_format="numpy", prefetch_batches=processes):
                seen += len(b["target"])
            rates.append(seen / (time.perf_counter() - start))
        return rates
    finally:
        if started:
            ray.shutdown()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--manifest", type=Path, help="a split manifest (default: generate sample data)")
    parser.add_argument("--images-per-class", type=int, default=60, help="sample data size when generated")
    parser.add_argument("--size", type=int, default=128, help="input size of the transform")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--blocks", type=int, help="Ray Data input blocks (default: make_dataset's choice)")
    parser.add_argument("--out", type=Path, default=Path("reports/bench"))
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

    with tempfile.TemporaryDirectory() as tmp:
        manifest = args.manifest
        if manifest is None:
            root = Path(tmp) / "sample"
            synthesize(
                root, images_per_class=args.images_per_class, size=args.size, formats="match", progress=False
            )
            index_tree(root, Path(tmp) / "m.parquet", progress=False)
            split = assign_splits(read_manifest(Path(tmp) / "m.parquet")).manifest
            manifest = Path(tmp) / "m.split.parquet"
            split.to_parquet(manifest)
        rows = select_rows(manifest, "train")
        spec = InputSpec(args.size, mean=(0.5,) * 3, std=(0.5,) * 3, crop_policy="crop")
        torch_rates = _torch_epochs(rows, spec, args.processes, args.batch_size, args.epochs)
        ray_rates = _ray_epochs(rows, spec, args.processes, args.batch_size, args.epochs, args.blocks)

    steady = slice(1, None) if args.epochs > 1 else slice(None)
    torch_steady = sum(torch_rates[steady]) / len(torch_rates[steady])
    ray_steady = sum(ray_rates[steady]) / len(ray_rates[steady])
    results = {
        "benchmark": "data",
        "machine": machine(),
        "images": len(rows),
        "input_size": args.size,
        "processes": args.processes,
        "batch_size": args.batch_size,
        "torch_dataloader_img_s": torch_rates,
        "ray_data_img_s": ray_rates,
        "steady_ratio_ray_over_torch": ray_steady / torch_steady,
        "first_epoch_ratio_ray_over_torch": ray_rates[0] / torch_rates[0],
        "goal": ">= 0.9",
    }
    md = "\n".join(
        [
            "## Data pipeline: Ray Data vs PyTorch DataLoader",
            "",
            f"{len(rows)} training images, {args.size} px crop + train augmentations, "
            f"{args.processes} processes, batch {args.batch_size}, {args.epochs} epochs; "
            f"machine: {results['machine']['cpus']} CPUs.",
            "",
            "| pipeline | first epoch img/s | steady img/s |",
            "|---|---:|---:|",
            f"| PyTorch DataLoader | {torch_rates[0]:.0f} | {torch_steady:.0f} |",
            f"| Ray Data | {ray_rates[0]:.0f} | {ray_steady:.0f} |",
            f"| **ratio Ray / DataLoader** | {results['first_epoch_ratio_ray_over_torch']:.2f} | "
            f"**{results['steady_ratio_ray_over_torch']:.2f}** (goal >= 0.9) |",
            "",
        ]
    )
    write_results(args.out, "data", results, md)
    print(md)
    return results


if __name__ == "__main__":
    main()
