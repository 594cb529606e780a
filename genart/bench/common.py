"""What every benchmark records: the machine it ran on, and where its JSON and Markdown go."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["machine", "write_results"]


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
