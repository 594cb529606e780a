"""Training benchmark: Ray Train with 1 and 2 workers against a plain PyTorch loop, same model and data.

All three train the same zoo model on the same generated images with the same train transform and batch
size; throughput is counted over the epochs after the first (start-up excluded), side by side in one run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from genart.bench.common import generated_manifest, machine, write_results
from genart.config import load_config
from genart.data.pipeline import ManifestDataset, select_rows
from genart.models.allocator import reuse_freed_memory
from genart.models.zoo import build_model


def _plain_loop(manifest: Path, config, epochs: int) -> list[float]:
    reuse_freed_memory()  # as the Ray Train workers do
    model, spec = build_model(config.model.name, pretrained=False, input_size=config.model.input_size)
    rows = select_rows(manifest, "train")
    loader = DataLoader(
        ManifestDataset(rows, spec, training=True, augment=config.augment),
        batch_size=config.train.batch_size,
        shuffle=True,
        num_workers=1,
        persistent_workers=True,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    rates = []
    model.train()
    for _ in range(epochs):
        start, seen = time.perf_counter(), 0
        for images, targets in loader:
            loss = loss_fn(model(images), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(targets)
        rates.append(seen / (time.perf_counter() - start))
    return rates


def _ray_train(manifest: Path, config, workers: int, epochs: int, storage: Path) -> list[float]:
    from genart.train.trainer import build_trainer

    cpus = {1: 1.0}.get(workers, 0.5)
    config = config.model_copy(deep=True)
    config.train.num_workers, config.train.cpus_per_worker, config.train.epochs = workers, cpus, epochs
    config.train.storage_path, config.train.early_stop_patience = storage, 0
    result = build_trainer(config, manifest, run_name=f"bench-{workers}w-{time.time_ns()}").fit()
    return [m["train_img_s"] for m in result.return_value]


def _plot(steady: dict[str, float], path: Path) -> Path:
    """Training throughput against the number of workers, the plain loop as the reference line."""
    from genart.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    workers = [1, 2]
    ray_rates = [steady["ray_1"], steady["ray_2"]]
    ax.plot(workers, ray_rates, marker="o", label="Ray Train (DDP over gloo)")
    for w, r in zip(workers, ray_rates, strict=True):
        label = f"{r:.1f} ({r / steady['plain']:.2f}x)"
        ax.annotate(label, (w, r), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.axhline(steady["plain"], color="tab:orange", ls="--", label="plain PyTorch loop")
    ax.set_xticks(workers)
    ax.set_xlim(0.6, 2.4)
    ax.set_xlabel("Ray Train workers")
    ax.set_ylabel("training images per second")
    ax.set_ylim(0, max(*ray_rates, steady["plain"]) * 1.25)
    ax.set_title("Training throughput against workers", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="residual")
    parser.add_argument("--size", type=int, default=64, help="input size (native-resolution crops)")
    parser.add_argument("--images-per-class", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("reports/bench"))
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    config = load_config(
        overrides=[
            f"model.name={args.model}",
            f"model.input_size={args.size}",
            "model.pretrained=false",
            f"train.batch_size={args.batch_size}",
            "augment.jpeg_p=0",
            "augment.rescale_p=0",
            "augment.blur_p=0",
        ],
        environ={},
    )
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        manifest = generated_manifest(Path(tmp), args.images_per_class, args.size + 32)
        images = len(select_rows(manifest, "train"))
        plain = _plain_loop(manifest, config, args.epochs)
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        try:
            one = _ray_train(manifest, config, 1, args.epochs, Path(tmp) / "runs")
            two = _ray_train(manifest, config, 2, args.epochs, Path(tmp) / "runs")
        finally:
            ray.shutdown()

    def steady(rates: list[float]) -> float:
        tail = rates[1:] or rates
        return sum(tail) / len(tail)

    results = {
        "benchmark": "train",
        "machine": machine(),
        "model": args.model,
        "input_size": args.size,
        "images": images,
        "plain_pytorch_img_s": plain,
        "ray_train_1_worker_img_s": one,
        "ray_train_2_workers_img_s": two,
        "ratio_1_worker_over_plain": steady(one) / steady(plain),
        "ratio_2_workers_over_plain": steady(two) / steady(plain),
        "ratio_2_over_1_worker": steady(two) / steady(one),
    }
    md = "\n".join(
        [
            "## Training: Ray Train vs a plain PyTorch loop",
            "",
            f"{args.model} at {args.size} px, {images} training images, batch {args.batch_size}, "
            f"{args.epochs} epochs (first excluded); {results['machine']['cpus']} CPUs.",
            "",
            "| trainer | steady img/s | ratio to plain |",
            "|---|---:|---:|",
            f"| plain PyTorch loop (1 process + 1 loader worker) | {steady(plain):.1f} | 1.00 |",
            f"| Ray Train, 1 worker | {steady(one):.1f} | {results['ratio_1_worker_over_plain']:.2f} |",
            f"| Ray Train, 2 workers (DDP) | {steady(two):.1f} | "
            f"{results['ratio_2_workers_over_plain']:.2f} |",
            "",
            "![training throughput against workers](train_workers.png)",
            "",
        ]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    _plot(
        {"plain": steady(plain), "ray_1": steady(one), "ray_2": steady(two)}, args.out / "train_workers.png"
    )
    write_results(args.out, "train", results, md)
    print(md)
    return results


if __name__ == "__main__":
    main()
