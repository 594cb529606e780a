"""Data benchmark: the Ray Data pipeline against a PyTorch DataLoader, same files, transform and processes.

Two cases: the generated sample data (PNG, cropped to 128 px: about a millisecond of decoding an image) and,
with ``--real``, the real training images (``../shared/data/real-train``: 512-px JPEG resized to 224 with the
real recipe's augmentations, ``jobs/configs/real-lite0.yaml``), where decoding is a larger share.

Both sides decode and augment the same manifest rows with :mod:`genart.data.transforms`
(:class:`~genart.data.pipeline.ManifestDataset` and :func:`~genart.data.pipeline.make_dataset`), with the same
number of processes (DataLoader workers; Ray Data limited to that many CPUs of one local Ray), and hand their
consumer the same thing: torch batches of normalised ``image`` and ``target``, as the training loop takes them
(Ray Data hands them over as uint8 and the consumer normalises, as the train loop does on its device).

Each side runs ``--epochs`` passes per repeat (Ray Data reads them all in one execution, as the train loop
does), ``--repeats`` times, interleaved, after one untimed epoch a side, and is timed over the whole
repeat, start-up included. The report gives each side's median and spread; the ratio counts as a result
only when each side's repeats agree within 20% (:func:`genart.bench.common.ratio_verdict`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from genart.bench.common import (
    generated_manifest,
    interleave,
    machine,
    ratio_verdict,
    repeat_summary,
    split_manifest,
    write_results,
)
from genart.config import AugmentConfig, load_config
from genart.data.pipeline import ManifestDataset, make_dataset, select_rows, split_epochs
from genart.data.transforms import InputSpec, normalize

GOAL = 0.9
SIDES = ("dataloader", "ray_data")
NAMES = {"dataloader": "PyTorch DataLoader", "ray_data": "Ray Data"}


@dataclass(frozen=True)
class Case:
    """One data set to read: its training rows, how they are transformed, and a line saying what it is."""

    name: str
    rows: pd.DataFrame
    spec: InputSpec
    augment: AugmentConfig
    description: str


@dataclass
class Passes:
    """Each pass of one side's repeat: its images/s and how long its first batch took to arrive."""

    rates: list[float]
    first_batch_s: list[float]


def _rates(passes: Iterable[Iterable[Any]], count) -> Passes:
    out, clock = Passes([], []), time.perf_counter()
    for batches in passes:
        start, seen, first = clock, 0, None
        for batch in batches:
            first = first if first is not None else time.perf_counter() - start
            seen += count(batch)
        clock = time.perf_counter()
        out.rates.append(seen / (clock - start))
        out.first_batch_s.append(first if first is not None else float("nan"))
    return out


def dataloader_rates(case: Case, processes: int, batch: int, epochs: int) -> Passes:
    """Each pass of a PyTorch DataLoader with ``processes`` workers."""
    from torch.utils.data import DataLoader

    loader = DataLoader(
        ManifestDataset(case.rows, case.spec, training=True, augment=case.augment),
        batch_size=batch,
        shuffle=True,
        num_workers=processes,
        persistent_workers=processes > 0,
    )
    return _rates((loader for _ in range(epochs)), lambda b: len(b[1]))


def ray_data_rates(case: Case, processes: int, batch: int, epochs: int, blocks: int | None = None) -> Passes:
    """Each pass of the training pipeline's dataset, Ray Data held to ``processes`` CPUs and read the way the
    train loop reads its shard: every epoch in one dataset, read once and cut into epochs
    (:func:`~genart.data.pipeline.split_epochs`), as torch batches of ``image`` and ``target``, the images
    handed over as uint8 and normalised by the consumer (:func:`genart.data.transforms.normalize`)."""
    import ray.data
    from ray.data import ExecutionResources

    ds = make_dataset(case.rows, case.spec, training=True, augment=case.augment, batch_size=batch,
                      num_blocks=blocks, as_uint8=True, epochs=epochs,
                      columns=["image", "target"])  # fmt: skip

    def count(b: dict[str, Any]) -> int:
        normalize(b["image"], case.spec)
        return len(b["target"])

    options = ray.data.DataContext.get_current().execution_options
    before, options.resource_limits = options.resource_limits, ExecutionResources(cpu=processes)
    try:
        stream = ds.iter_torch_batches(batch_size=batch, prefetch_batches=processes)
        return _rates(split_epochs(stream, len(case.rows), epochs), count)
    finally:
        options.resource_limits = before


def _repeat(case: Case, args: argparse.Namespace) -> dict[str, list[Passes]]:
    def runs(epochs: int) -> dict[str, Any]:
        return {
            "dataloader": lambda: dataloader_rates(case, args.processes, args.batch_size, epochs),
            "ray_data": lambda: ray_data_rates(case, args.processes, args.batch_size, epochs, args.blocks),
        }

    # One untimed epoch a side first: Ray's worker processes start (and import torch) once per cluster, not
    # once per run, and the files come into the page cache for both sides.
    interleave(runs(1), 1)
    return interleave(runs(args.epochs), args.repeats)


def _whole_run(rates: list[float]) -> float:
    """Images over time for the whole repeat, start-up included (every epoch is the same size).

    Not the later epochs alone: Ray Data reads every epoch in one execution, as the train loop does, and runs
    ahead of its consumer by a few blocks, so a later epoch can arrive from blocks decoded during an earlier
    one (with blocks about as large as an epoch, in no time at all). Only the whole run is free of that."""
    return len(rates) / sum(1 / r for r in rates)


def summarise(case: Case, repeats: dict[str, list[Passes]]) -> dict[str, Any]:
    """Median and spread of each side's whole-run rate over the repeats, and the ratio's verdict; with the
    first epoch's rate and how long each side waits for its first batch."""
    out: dict[str, Any] = {"images": len(case.rows), "description": case.description}
    for side in SIDES:
        passes = repeats[side]
        out[side] = {
            **repeat_summary([_whole_run(p.rates) for p in passes]),
            "first_epoch_median": statistics.median(p.rates[0] for p in passes),
            "first_batch_s_median": statistics.median(p.first_batch_s[0] for p in passes),
            "epochs": [p.rates for p in passes],
            "first_batch_s": [p.first_batch_s for p in passes],
        }
    out["ratio"] = ratio_verdict(
        out["ray_data"], out["dataloader"], GOAL, (NAMES["ray_data"], NAMES["dataloader"])
    )
    return out


def markdown(results: dict[str, Any]) -> str:
    rows, ratios = [], []
    for name, case in results["cases"].items():
        for side in SIDES:
            s = case[side]
            rows.append(
                f"| {name}: {case['description']} | {NAMES[side]} | {s['first_epoch_median']:.0f} | "
                f"**{s['median']:.0f}** | {s['min']:.0f}-{s['max']:.0f} | {s['spread']:.0%} | "
                f"{s['first_batch_s_median']:.2f} |"
            )
        ratios.append(f"| {name} | {case['ratio']['text']} |")
    return "\n".join(
        [
            "## Data pipeline: Ray Data vs PyTorch DataLoader",
            "",
            f"{results['processes']} processes on each side, batch {results['batch_size']}, "
            f"{results['epochs']} epochs per repeat, {results['repeats']} repeats interleaved after an "
            "untimed epoch a side; machine: "
            f"{results['machine']['cpus']} CPUs. Whole run img/s: images over time for all the repeat's "
            "epochs, start-up included (Ray Data reads every epoch in one execution, as the train loop does, "
            "and a later epoch can arrive from blocks decoded during an earlier one, so epochs alone are not "
            "compared); the median over the repeats, their range, and the spread (range / median). First "
            "batch: how long each side waits for the run's first batch (median).",
            "",
            "| case | pipeline | first epoch img/s | whole run img/s | range | spread | first batch, s |",
            "|---|---|---:|---:|---|---:|---:|",
            *rows,
            "",
            f"| case | Ray Data / DataLoader, whole-run medians (goal >= {GOAL}) |",
            "|---|---|",
            *ratios,
            "",
            "![Ray Data against the DataLoader](data_throughput.png)",
            "",
        ]
    )


def plot(results: dict[str, Any], path: Path) -> Path:
    """Per case, each side's whole-run img/s (the range over repeats as error bars, the ratio above Ray Data's
    bar, flagged when the repeats disagree) and how long each side waits for the run's first batch."""
    from genart.plots import plt, save_figure

    cases = list(results["cases"].items())
    fig, (rates, waits) = plt.subplots(1, 2, figsize=(8.4, 3.4))
    width, colours = 0.38, {"dataloader": "tab:orange", "ray_data": "tab:blue"}
    for i, side in enumerate(SIDES):
        xs = [c + (i - 0.5) * width for c in range(len(cases))]
        medians = [case[side]["median"] for _, case in cases]
        spans = [[m - case[side]["min"] for m, (_, case) in zip(medians, cases, strict=True)],
                 [case[side]["max"] - m for m, (_, case) in zip(medians, cases, strict=True)]]  # fmt: skip
        rates.bar(xs, medians, width, yerr=spans, capsize=3, color=colours[side], label=NAMES[side])
        waits.bar(xs, [case[side]["first_batch_s_median"] for _, case in cases], width, color=colours[side])
        if side == "ray_data":
            for x, m, (_, case) in zip(xs, medians, cases, strict=True):
                verdict = case["ratio"]
                label = f"{verdict['ratio']:.2f}x" + ("" if verdict["result"] else "\n(no result: noisy)")
                rates.annotate(
                    label, (x, m), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8
                )
    for ax in (rates, waits):
        ax.set_xticks(range(len(cases)), [name for name, _ in cases])
    rates.set_ylabel("images per second, whole run")
    rates.set_title(
        f"Throughput, {results['processes']} processes a side (goal: Ray Data >= {GOAL}x)", fontsize=9
    )
    rates.legend(fontsize=7)
    waits.set_ylabel("seconds")
    waits.set_title("Wait for the run's first batch", fontsize=9)
    return save_figure(fig, path)


def _cases(args: argparse.Namespace, work: Path) -> list[Case]:
    generated = args.manifest or generated_manifest(work / "generated", args.images_per_class, args.size)
    cases = [
        Case(
            "generated" if args.manifest is None else "manifest",
            select_rows(generated, "train"),
            InputSpec(args.size, mean=(0.5,) * 3, std=(0.5,) * 3, crop_policy="crop"),
            AugmentConfig(),
            f"{'PNG ' if args.manifest is None else ''}{args.size} px crop, default augmentations",
        )
    ]
    if args.real is not None:
        recipe = load_config(args.real_config, environ={})
        size = recipe.model.input_size or 224
        policy = recipe.model.crop_policy or "resize"
        cases.append(
            Case(
                "real",
                select_rows(split_manifest(args.real, work / "real"), "train"),
                InputSpec(size, mean=(0.5,) * 3, std=(0.5,) * 3, crop_policy=policy),
                recipe.augment,
                f"{args.real.name}, {policy} to {size} px, {args.real_config.stem}'s augmentations",
            )
        )
    return cases


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--manifest", type=Path, help="a split manifest instead of generated sample data")
    parser.add_argument("--images-per-class", type=int, default=60, help="sample data size when generated")
    parser.add_argument("--size", type=int, default=128, help="input size of the generated case")
    parser.add_argument("--real", type=Path, help="a folder of real images to measure too (real-train)")
    parser.add_argument(
        "--real-config", type=Path, default=Path("jobs/configs/real-lite0.yaml"),
        help="the recipe whose input size, crop policy and augmentations the real case uses",
    )  # fmt: skip
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--epochs", type=int, default=4, help="passes per repeat, timed together with the start-up"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side, interleaved")
    parser.add_argument("--blocks", type=int, help="Ray Data input blocks (default: make_dataset's choice)")
    parser.add_argument("--out", type=Path, default=Path("reports/bench"))
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import ray

    results: dict[str, Any] = {
        "benchmark": "data",
        "machine": machine(),
        "processes": args.processes,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "goal": f">= {GOAL}",
        "cases": {},
    }
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=args.processes, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for case in _cases(args, Path(tmp)):
                print(f"{case.name}: {len(case.rows)} images, {case.description} ...", flush=True)
                results["cases"][case.name] = summarise(case, _repeat(case, args))
    finally:
        if started:
            ray.shutdown()
    md = markdown(results)
    write_results(args.out, "data", results, md)
    plot(results, args.out / "data_throughput.png")
    print(md)
    return results


if __name__ == "__main__":
    main()
