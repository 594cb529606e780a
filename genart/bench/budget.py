"""make bench-budget: peak memory and wall time of preprocessing hostile files, before and with the budget.

Each file is preprocessed in a child forked from a process that has already imported torch, so a case's
peak resident memory is its own: the child resets its peak (``/proc/self/clear_refs``), runs the case, and
reports ``VmHWM`` less the resident memory it started with. The child's address space is capped
(``RLIMIT_AS``), so the unbudgeted path fails with ``MemoryError`` where it used to take the machine down.

``unbudgeted`` is what genart did before issue 15: the 64 Mpx pixel cap only, a full decode, then the eval
transforms. ``budgeted`` is :func:`genart.data.transforms.decode_with_header` then the same transforms.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import signal
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["Measurement", "Sandbox", "main", "run_budgeted", "run_unbudgeted"]

#: The model inputs each case is prepared for: one resizing model, or the demo's mix with a native crop.
SPEC_SETS = {
    "resize": [{"input_size": 224, "crop_policy": "resize"}],
    "mixed": [{"input_size": 224, "crop_policy": "resize"}, {"input_size": 224, "crop_policy": "crop"}],
}
#: Address space a case may add to the child: enough for any budgeted case, far below the machine's memory.
CHILD_EXTRA_ADDRESS_SPACE = 3 * 2**30
CHILD_TIMEOUT_S = 60


@dataclass
class Measurement:
    """One case, one path: what came out, and what it cost."""

    status: str  # accepted | refused (the budget) | error (not an image) | memory (MemoryError) | killed
    detail: str
    peak_mb: float | None
    wall_s: float | None


def run_budgeted(data: bytes, specs: list[dict[str, Any]]) -> tuple[str, str]:
    from genart.data.transforms import (
        ImageBudgetError,
        ImageDecodeError,
        InputSpec,
        decode_image,
        eval_transform,
    )

    inputs = [InputSpec.from_dict(s) for s in specs]
    try:
        image = decode_image(data, inputs)
        shapes = [tuple(eval_transform(spec)(image).shape) for spec in inputs]
    except ImageBudgetError as exc:
        return "refused", f"{exc.limit}: {exc.value}"
    except ImageDecodeError as exc:
        return "error", str(exc)[:120]
    return "accepted", f"{shapes}"


def run_unbudgeted(data: bytes, specs: list[dict[str, Any]]) -> tuple[str, str]:
    import io

    from PIL import Image, ImageOps

    from genart.config import MAX_IMAGE_PIXELS
    from genart.data.transforms import InputSpec, eval_transform

    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_IMAGE_PIXELS:
            return "refused", f"max_pixels: {image.width * image.height}"
        image = ImageOps.exif_transpose(image).convert("RGB")
        shapes = [tuple(eval_transform(InputSpec.from_dict(s))(image).shape) for s in specs]
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        return "error", f"{type(exc).__name__}: {str(exc)[:100]}"
    return "accepted", f"{shapes}"


_PATHS = {"budgeted": run_budgeted, "unbudgeted": run_unbudgeted}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _child(path: str, data: bytes, specs: list[dict[str, Any]], out: int) -> None:
    """In the forked child: cap, reset the peak, run, report. Never returns."""
    try:
        limit = _status_kb("VmSize") * 1024 + CHILD_EXTRA_ADDRESS_SPACE
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        signal.alarm(CHILD_TIMEOUT_S)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set
        base = _status_kb("VmRSS")
        start = time.perf_counter()
        try:
            status, detail = _PATHS[path](data, specs)
        except MemoryError:
            status, detail = "memory", "MemoryError"
        wall = time.perf_counter() - start
        peak = (_status_kb("VmHWM") - base) / 1024
        os.write(
            out, json.dumps({"status": status, "detail": detail, "peak_mb": peak, "wall_s": wall}).encode()
        )
    finally:
        os._exit(0)


def _measure(path: str, data: bytes, specs: list[dict[str, Any]]) -> Measurement:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        _child(path, data, specs, write)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    if not chunks:
        return Measurement("killed", f"child ended with status {status}", None, None)
    return Measurement(**json.loads(b"".join(chunks)))


def _send(stream: BinaryIO, obj: Any) -> None:
    payload = pickle.dumps(obj)
    stream.write(struct.pack("<Q", len(payload)) + payload)
    stream.flush()


def _receive(stream: BinaryIO) -> Any:
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError
    return pickle.loads(stream.read(struct.unpack("<Q", head)[0]))


def _zygote() -> None:
    """Import once, then fork a measured child per request read from stdin."""
    import genart.data.transforms  # noqa: F401  (imported before forking, so no child pays for it)

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but results on the pipe
    while True:
        try:
            path, data, specs = _receive(stdin)
        except EOFError:
            return
        _send(stdout, asdict(_measure(path, data, specs)))


class Sandbox:
    """A process that has imported genart's transforms and measures each case in a fresh fork of itself."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "genart.bench.budget", "--zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )

    def measure(self, data: bytes, path: str = "budgeted", specs: str = "mixed") -> Measurement:
        assert self.process.stdin is not None and self.process.stdout is not None
        _send(self.process.stdin, (path, data, SPEC_SETS[specs]))
        return Measurement(**_receive(self.process.stdout))

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=30)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cell(m: Measurement) -> str:
    peak = "-" if m.peak_mb is None else f"{m.peak_mb:,.0f} MB"
    wall = "-" if m.wall_s is None else f"{m.wall_s:.2f} s"
    return f"{m.status} ({m.detail[:48]}), {peak}, {wall}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m genart.bench.budget",
        description="Preprocess every hostile file (genart.bench.hostile) without and with the decoding "
        "budget; write peak memory and wall time per case to OUT/budget.json and OUT/budget.md.",
    )
    parser.add_argument("--out", type=Path, default=Path("reports/bench"), help="folder for budget.json/.md")
    parser.add_argument(
        "--specs", choices=sorted(SPEC_SETS), default="mixed", help="model inputs to prepare for"
    )
    parser.add_argument("--zygote", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.zygote:
        _zygote()
        return
    from genart.bench.common import machine, write_results
    from genart.bench.hostile import corpus

    rows = []
    with Sandbox() as sandbox:
        for case in corpus():
            before = sandbox.measure(case.data, "unbudgeted", args.specs)
            after = sandbox.measure(case.data, "budgeted", args.specs)
            rows.append({"case": case.name, "bytes": len(case.data), "attack": case.attack,
                         "unbudgeted": asdict(before), "budgeted": asdict(after)})  # fmt: skip
            print(f"{case.name:28s} before: {_cell(before)}\n{'':28s} after:  {_cell(after)}", flush=True)
    peaks = [r["budgeted"]["peak_mb"] for r in rows if r["budgeted"]["peak_mb"] is not None]
    lines = [
        f"# Preprocessing budget: hostile files ({args.specs} model inputs)",
        "",
        "Peak resident memory of the preprocessing (above the process' own) and wall time, per case, in a "
        f"child capped at {CHILD_EXTRA_ADDRESS_SPACE // 2**30} GiB of extra address space. "
        f"Largest budgeted peak: **{max(peaks):,.0f} MB**.",
        "",
        "| case | bytes | before (pixel cap only) | after (budget) |",
        "|---|---:|---|---|",
    ]
    for r in rows:
        before, after = Measurement(**r["unbudgeted"]), Measurement(**r["budgeted"])
        lines.append(f"| {r['case']} | {r['bytes']:,} | {_cell(before)} | {_cell(after)} |")
    results = {
        "machine": machine(),
        "specs": SPEC_SETS[args.specs],
        "max_budgeted_peak_mb": max(peaks),
        "cases": rows,
    }
    json_path, md_path = write_results(args.out, "budget", results, "\n".join(lines) + "\n")
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
