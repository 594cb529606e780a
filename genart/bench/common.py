"""What every benchmark records: the machine it ran on, where its JSON and Markdown go, and how repeated
measurements are summarised so that a noisy machine shows as noise instead of as a result."""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "AGREEMENT",
    "generated_manifest",
    "interleave",
    "machine",
    "pair_label",
    "ratio_verdict",
    "repeat_summary",
    "split_manifest",
    "write_results",
]

#: Repeats whose spread ((max - min) / median) passes this disagree: a ratio of their medians is no result.
AGREEMENT = 0.20


def machine() -> dict[str, Any]:
    """A short description of the machine, stored beside every figure."""
    import torch

    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def write_results(out: Path, name: str, results: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(results, indent=2, default=str))
    md_path.write_text(markdown)
    return json_path, md_path


def split_manifest(root: Path, work: Path) -> Path:
    """Index the image folders under ``root`` and split them 70/15/15 (``genart data index`` + ``split``)
    into a manifest in ``work``."""
    from genart.data.index import index_tree, read_manifest, write_manifest
    from genart.data.split import assign_splits

    index_tree(root, work / "manifest.parquet", progress=False)
    split = assign_splits(read_manifest(work / "manifest.parquet")).manifest
    return write_manifest(split, work / "manifest.split.parquet")


def generated_manifest(work: Path, images_per_class: int, size: int) -> Path:
    """The generated sample data (``genart data synth``, all PNG) of ``size`` px under ``work``, indexed
    and split."""
    from genart.data.synth import synthesize

    synthesize(work / "sample", images_per_class=images_per_class, size=size, formats="match", progress=False)
    return split_manifest(work / "sample", work)


def interleave(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[Any]]:
    """Call each of ``runs`` ``repeats`` times, interleaved (a, b, b, a, a, b, ...), and collect what each
    returned. Alternating the order spreads a slow stretch of a shared machine over every configuration
    instead of pinning it on whichever ran then."""
    names = list(runs)
    out: dict[str, list[Any]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            out[name].append(runs[name]())
    return out


def repeat_summary(values: list[float], tolerance: float = AGREEMENT) -> dict[str, Any]:
    """Median, range and spread ((max - min) / median) of repeated measurements of one configuration;
    ``agree`` is False once the spread passes ``tolerance`` (or with fewer than two repeats to compare)."""
    if not values:
        raise ValueError("no measurements to summarise")
    median = statistics.median(values)
    spread = (max(values) - min(values)) / median if median > 0 else float("inf")
    return {
        "values": list(values),
        "median": median,
        "min": min(values),
        "max": max(values),
        "spread": spread,
        "agree": len(values) > 1 and spread <= tolerance,
    }


def pair_label(pair: dict[str, Any]) -> str:
    """A measured serving pair's name in a report: its model size and the Serve ingress layout (results
    written before there were layouts are the ``proxy`` one)."""
    return f"{pair['model_input']} px, {pair.get('ingress', 'proxy')}"


def ratio_verdict(
    numerator: dict[str, Any], denominator: dict[str, Any], goal: float | None, names: tuple[str, str]
) -> dict[str, Any]:
    """The ratio of two :func:`repeat_summary` medians against ``goal`` (at least; None: no goal, only the
    ratio), or why it is no result: ``text`` says which side's repeats disagreed and by how much."""
    ratio = numerator["median"] / denominator["median"] if denominator["median"] > 0 else float("nan")
    noisy = [
        f"{name} repeats disagree by {s['spread']:.0%} (more than {AGREEMENT:.0%})"
        if len(s["values"]) > 1
        else f"{name} ran once"
        for name, s in zip(names, (numerator, denominator), strict=True)
        if not s["agree"]
    ]
    if noisy:
        text = f"no result: {'; '.join(noisy)}; the medians' ratio {ratio:.2f} is not a measurement"
        return {"ratio": ratio, "result": False, "met": None, "text": text}
    if goal is None:
        return {"ratio": ratio, "result": True, "met": None, "text": f"{ratio:.2f}"}
    met = ratio >= goal
    return {
        "ratio": ratio,
        "result": True,
        "met": met,
        "text": f"{ratio:.2f} (goal >= {goal}: {'met' if met else 'not met'})",
    }
