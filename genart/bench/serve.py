"""Serving benchmark: the Serve ensemble over HTTP vs the in-process ceiling vs a plain FastAPI app, at two
model sizes, measured so that a noisy machine shows as noise instead of as a result.

Two pairs of untrained models (speed does not depend on the weights):

- **96 px**: the demo's lite0 + residual (both centre crops), 160 px PNG uploads;
- **224 px**: the real recipe's lite0 (whole image resized) + residual (native-resolution crop), 512 px JPEG
  uploads (the real training images are 512 px JPEGs at quality 95).

For each pair, three servers run the same models on the same images:

- **in-process ceiling**: decode + transform + one batched forward pass per model, no HTTP, no Ray;
- **Serve**: `genart.serve.app` on a local Ray, over HTTP;
- **plain FastAPI**: one uvicorn process with the same models and preprocessing, no batching.

Each configuration is measured ``--repeats`` times, interleaved (ceiling, plain, Serve, ceiling, ...), at
concurrency 1, 4, 16 and 64, after one uncounted warm-up round of the same, and reported as the median with
its spread ((max - min) / median). A ratio whose two sides' repeats disagree by more than 20 % is printed as
"not a result", with the spreads.

Goals (issue 18): at 224 px, Serve at concurrency 16 >= 0.8x the ceiling and >= 1.2x the plain app; the
Serve layout's CPU per request, everything but the forward passes, <= 12 ms at concurrency 16.

Where the time goes: during each concurrency-16 run the CPU seconds of every process (the load driver, the
plain app, each Ray process) are read before and after, and the model replicas report the CPU their forward
passes took (:meth:`ModelDeployment.usage`). The medians over the repeats, in CPU ms per answered request,
make the table. With ``--profile``, py-spy samples every Serve replica and the proxy during one more,
untimed run at concurrency 16 of each pair: their collapsed stacks and hottest functions go to ``--out``.
"""

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genart.bench.common import AGREEMENT, machine, pair_label, ratio_verdict, repeat_summary, write_results
from genart.bench.harness import (
    ServeApp,
    bench_artifacts,
    bench_images,
    drive,
    free_port,
    ray_label,
    step_summary,
    wait_http,
)
from genart.models.allocator import allocator_environment
from genart.serve.app import INGRESS_ENV

__all__ = [
    "CONCURRENCY",
    "PAIRS",
    "InProcess",
    "Pair",
    "ceiling",
    "hottest_functions",
    "main",
    "plain_app",
    "serve_processes",
    "summarise_pair",
]

CONCURRENCY = (1, 4, 16, 64)
CPU_AT = 16  # the concurrency at which CPU per process is read
GOALS = {"ceiling": 0.8, "plain": 1.2, "layout_cpu_ms": 12.0}
IDLE_S = 5.0  # seconds of no traffic over which each repeat reads what the Serve app's processes cost idle

PROFILE_HEADER = ["### py-spy: hottest functions per Serve process (share of samples, waiting included)", ""]
PROFILE_FOOTER = "Collapsed stacks: `profile/*.txt` beside this file (open them in speedscope.app)."


@dataclass(frozen=True)
class Pair:
    """Two models to serve and the uploads they get."""

    size: int  # the models' input side
    crop_policies: tuple[str, str]  # lite0's, residual's
    image_size: int  # the uploads' side
    image_format: str
    what: str


PAIRS = {
    96: Pair(96, ("crop", "crop"), 160, "PNG", "the demo's pair (centre crops)"),
    224: Pair(224, ("resize", "crop"), 512, "JPEG", "the real recipe's pair (lite0 resized, residual crop)"),
}


# -- the three servers -------------------------------------------------------------------------------------
class InProcess:
    """The ceiling: decode + transform + batched forward passes in this process, nothing to serve them."""

    def __init__(self, artifacts: list[Path], images: list[bytes], batch: int = 16) -> None:
        import torch

        from genart.models.allocator import reuse_freed_memory
        from genart.models.artifact import load_artifact
        from genart.serve.deployments import spec_key

        reuse_freed_memory()  # as the Serve model replicas do: the references get the same allocator
        self.models = [load_artifact(p) for p in artifacts]
        self.keys = [spec_key(m.spec) for m in self.models]
        self.specs = {spec_key(m.spec): m.spec.to_dict() for m in self.models}
        self.images, self.batch, self.threads = images, batch, torch.get_num_threads()
        self.run(batch)  # warm-up

    def run(self, count: int) -> float:
        """Images per second over ``count`` images."""
        import torch

        from genart.serve.deployments import prepare_image

        start = time.perf_counter()
        for i in range(0, count, self.batch):
            stop = min(i + self.batch, count)
            prepared = [prepare_image(self.images[j % len(self.images)], self.specs) for j in range(i, stop)]
            for model, key in zip(self.models, self.keys, strict=True):
                model.predict_proba(torch.from_numpy(np.stack([p.tensors[key] for p in prepared])))
        return count / (time.perf_counter() - start)


def ceiling(artifacts: list[Path], images: list[bytes], batch: int = 16) -> dict[str, Any]:
    """Images/s of decode + transform + batched forward passes, in this process: nothing to serve it."""
    inproc = InProcess(artifacts, images, batch)
    return {"img_s": inproc.run(len(images) * 2), "batch": batch, "torch_threads": inproc.threads}


def plain_app(artifacts: list[str]):
    """A single-process FastAPI app with the same models and preprocessing and no batching."""
    import torch
    from fastapi import FastAPI, File, UploadFile

    from genart.models.artifact import load_artifact
    from genart.serve.deployments import prepare_image, spec_key

    models = [load_artifact(p) for p in artifacts]
    specs = {spec_key(m.spec): m.spec.to_dict() for m in models}
    app = FastAPI()

    @app.post("/predict")
    def predict(file: UploadFile = File(...)) -> dict[str, Any]:
        prepared = prepare_image(file.file.read(), specs)
        probs = [
            float(m.predict_proba(torch.from_numpy(prepared.tensors[spec_key(m.spec)][None]))[0])
            for m in models
        ]
        return {"probability": float(np.mean(probs))}

    return app


class PlainServer:
    """:func:`plain_app` in a uvicorn process of its own, on a free port."""

    def __init__(self, artifacts: list[Path]) -> None:
        port = free_port()
        code = (
            "import sys, uvicorn; from genart.bench.serve import plain_app; "
            f"uvicorn.run(plain_app(sys.argv[1:]), host='127.0.0.1', port={port}, log_level='warning')"
        )
        env = {**os.environ, **allocator_environment()}  # as the Serve model replicas are started
        self.proc = subprocess.Popen([sys.executable, "-c", code, *map(str, artifacts)], env=env)
        self.url = f"http://127.0.0.1:{port}/predict"
        try:
            wait_http(f"http://127.0.0.1:{port}/docs")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


# -- measuring -----------------------------------------------------------------------------------------------
def _cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """User + system CPU seconds, summed per role, of the given processes (gone ones count 0)."""
    import psutil

    totals: dict[str, float] = {}
    for role, group in pids.items():
        total = 0.0
        for pid in group:
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        totals[role] = total
    return totals


def serve_processes() -> dict[str, list[int]]:
    """The Ray processes under this one, by role (``ServeReplica:genart:m0``, ``ProxyActor``, ``raylet``)."""
    import psutil

    roles: dict[str, list[int]] = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            label = ray_label(proc.cmdline(), proc.name())
        except psutil.Error:
            continue
        if label and not label.startswith("ray::IDLE"):
            roles.setdefault(label.removeprefix("ray::"), []).append(proc.pid)
    return roles


def idle_cpu(pids: dict[str, list[int]], seconds: float = IDLE_S) -> dict[str, float]:
    """CPU ms per second of each role in ``pids`` over ``seconds`` without requests: what Ray's processes and
    the replicas' own loops cost whether or not anything is served."""
    before, start = _cpu_seconds(pids), time.perf_counter()
    time.sleep(seconds)
    after, elapsed = _cpu_seconds(pids), time.perf_counter() - start
    return {role: 1000 * (after[role] - before[role]) / elapsed for role in pids}


def _forward_usage(models: list[str]) -> np.ndarray:
    """CPU seconds, images and batches of the Serve model replicas' forward passes so far (one replica
    each), summed over the models."""
    from ray import serve

    total = np.zeros(3)
    for m in models:
        usage = serve.get_deployment_handle(m, app_name="genart").usage.remote().result(timeout_s=30)
        total += [usage["cpu_s"], usage["images"], usage["batches"]]
    return total


def _preprocess_cpu() -> float:
    """CPU seconds the Serve Preprocessor has spent decoding and transforming so far (one replica)."""
    from ray import serve

    handle = serve.get_deployment_handle("Preprocessor", app_name="genart")
    return handle.usage.remote().result(timeout_s=30)["cpu_s"]


def requests_at(concurrency: int, base: int) -> int:
    """Requests per measurement: ``base`` at concurrency 16, proportionally fewer below it (at least 12), and
    above it two per client."""
    return max(12, base * min(concurrency, CPU_AT) // CPU_AT, 2 * concurrency)


def measure(
    url: str,
    images: list[bytes],
    base: int,
    pids: dict[str, list[int]],
    models: list[str] | None = None,
) -> dict[int, dict[str, Any]]:
    """One pass over every concurrency: throughput and latency; at :data:`CPU_AT`, CPU ms per answered
    request of each process in ``pids`` (and of this driver), and of the forward passes of ``models``."""
    results = {}
    for c in CONCURRENCY:
        watched = {**pids, "load driver (this process)": [os.getpid()]}
        before, forward_before = _cpu_seconds(watched), _forward_usage(models) if models else None
        preprocess_before = _preprocess_cpu() if models else 0.0
        results[c] = step_summary(*asyncio.run(drive(url, images, c, requests=requests_at(c, base))))
        if models:
            cpu_s, images_done, batches = _forward_usage(models) - forward_before
            results[c]["mean_batch"] = images_done / batches if batches else None
        if c == CPU_AT:
            after, done = _cpu_seconds(watched), results[c]["ok"] or 1
            results[c]["cpu_ms_per_request"] = {
                role: 1000 * (after[role] - before[role]) / done for role in watched
            }
            if models:
                results[c]["forward_cpu_ms_per_request"] = 1000 * cpu_s / done
                results[c]["preprocess_cpu_ms_per_request"] = (
                    1000 * (_preprocess_cpu() - preprocess_before) / done
                )
    return results


def _start_profiles(
    pids: dict[str, list[int]], out: Path, tag: str
) -> list[tuple[str, subprocess.Popen, Path]]:
    """py-spy on each Serve replica and the proxy, writing collapsed stacks."""
    import shutil

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy is not installed (pip install py-spy): no profile", flush=True)
        return []
    out.mkdir(parents=True, exist_ok=True)
    started = []
    for role, group in pids.items():
        if not any(k in role for k in ("ServeReplica", "ProxyActor")):
            continue
        name = f"{tag}-" + role.replace("ServeReplica:genart:", "").replace(":", "_")
        raw = out / f"profile-{name}.txt"
        cmd = [
            spy,
            "record",
            "--pid",
            str(group[0]),
            "--format",
            "raw",
            "--output",
            str(raw),
            "--rate",
            "97",
            "--nonblocking",
        ]
        started.append((name, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), raw))
    time.sleep(1.0)  # py-spy attaches
    return started


def _stop_profiles(spies: list[tuple[str, subprocess.Popen, Path]]) -> None:
    import signal

    for _, proc, _ in spies:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    for name, proc, raw in spies:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if proc.returncode not in (0, None) and not raw.exists():
            print(f"py-spy on {name} failed: {proc.stderr.read().decode()[-300:]}", flush=True)


def hottest_functions(raw: Path, top: int = 6) -> list[tuple[str, float]]:
    """From py-spy's collapsed stacks (``frame;frame;frame count``): the leaf functions with the largest
    share of samples, idle waiting included (that is where a starved process spends its time)."""
    counts: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        function, _, where = stack.rsplit(";", 1)[-1].partition(" (")
        leaf = f"{function} ({where.rsplit('/', 1)[-1]}" if where else function  # file name, not its path
        counts[leaf] = counts.get(leaf, 0) + int(n)
        total += int(n)
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return [(name, n / total) for name, n in ranked] if total else []


# -- one pair ------------------------------------------------------------------------------------------------
def _median_cpu(runs: list[dict[int, dict[str, Any]]], key: str = "cpu_ms_per_request") -> dict[str, float]:
    roles = {role for run in runs for role in run[CPU_AT].get(key, {})}
    return {role: float(np.median([run[CPU_AT][key].get(role, 0.0) for run in runs])) for role in roles}


def layout_cpu(cpu: dict[str, float], forward_ms: float) -> float:
    """The Serve layout's CPU per request: every Ray process but the forward passes (the load driver is
    the client, not the layout)."""
    return sum(ms for role, ms in cpu.items() if not role.startswith("load driver")) - forward_ms


def _summarise_runs(runs: list[dict[int, dict[str, Any]]]) -> dict[int, dict[str, Any]]:
    table = {}
    for c in CONCURRENCY:
        steps = [run[c] for run in runs]
        table[c] = {
            "req_s": repeat_summary([s["req_s"] for s in steps]),
            "p50_ms": float(np.median([s["p50_ms"] for s in steps if s["p50_ms"] is not None] or [np.nan])),
            "p99_ms": float(np.median([s["p99_ms"] for s in steps if s["p99_ms"] is not None] or [np.nan])),
            "errors": sum(s["requests"] - s["ok"] for s in steps),
            "mean_batch": float(
                np.median([s["mean_batch"] for s in steps if s.get("mean_batch")] or [np.nan])
            ),
        }
    return table


def bench_pair(
    pair: Pair, repeats: int, base: int, root: Path, profile_dir: Path | None, ingress: str = "proxy"
) -> dict[str, Any]:
    """The three servers on ``pair``, measured ``repeats`` times each, interleaved; Serve with the ``ingress``
    layout (:data:`genart.serve.app.INGRESS_ENV`)."""
    artifacts = bench_artifacts(root, pair.size, pair.crop_policies)
    images = bench_images(32, pair.image_size, image_format=pair.image_format)
    log = lambda line: print(f"[{pair.size} px, {ingress}] {line}", flush=True)  # noqa: E731
    log("loading the in-process ceiling, the plain app and the Serve app ...")
    inproc = InProcess(artifacts, images)
    env = {
        "DATABASE_URL": f"sqlite:///{root}/bench.db",
        "GENART_API_KEY": "",
        "GENART_DATA_DIR": f"{root}/data",
    }
    plain = PlainServer(artifacts)
    ceilings: list[float] = []
    plain_runs: list[dict[int, dict[str, Any]]] = []
    serve_runs: list[dict[int, dict[str, Any]]] = []
    idle_runs: list[dict[str, float]] = []
    try:
        with ServeApp(artifacts, env, ingress=ingress) as app:
            serve_url, models = f"{app.base}/predict", [f"m{i}" for i in range(len(artifacts))]
            # Warm-up, not counted: one round as a repeat runs it. Before it, the first repeat ran slower than
            # the others in every run (Serve 14.5-16.6 req/s against 20.5-24.0 at 16 clients, 2026-12-03): the
            # first batches of each size, the heaps' high-water marks, Ray settling after a deploy.
            ceiling_images = max(2 * inproc.batch, base)
            inproc.run(ceiling_images)
            for url in (plain.url, serve_url):
                measure(url, images, base, {})
            log("warmed up (one round, not counted)")
            for r in range(repeats):
                ceilings.append(inproc.run(ceiling_images))
                plain_runs.append(measure(plain.url, images, base, {"plain app": [plain.proc.pid]}))
                pids = serve_processes()
                idle_runs.append(idle_cpu(pids))
                serve_runs.append(measure(serve_url, images, base, pids, models))
                log(
                    f"repeat {r + 1}/{repeats}: ceiling {ceilings[-1]:.1f} img/s; at {CPU_AT} clients, "
                    f"plain {plain_runs[-1][CPU_AT]['req_s']:.1f} req/s, "
                    f"Serve {serve_runs[-1][CPU_AT]['req_s']:.1f} req/s"
                )
            if profile_dir:  # untimed: py-spy's own sampling would slow a measured pass
                spies = _start_profiles(serve_processes(), profile_dir, f"{pair.size}px-{ingress}")
                asyncio.run(drive(serve_url, images, CPU_AT, requests=requests_at(CPU_AT, base)))
                _stop_profiles(spies)
    finally:
        plain.stop()
    summary = summarise_pair(
        pair, images, ceilings, serve_runs, plain_runs, inproc.batch, inproc.threads, idle_runs
    )
    return {**summary, "ingress": ingress}


def summarise_pair(
    pair: Pair,
    images: list[bytes],
    ceilings: list[float],
    serve_runs: list[dict[int, dict[str, Any]]],
    plain_runs: list[dict[int, dict[str, Any]]],
    ceiling_batch: int,
    ceiling_threads: int,
    idle_runs: list[dict[str, float]] | None = None,
) -> dict[str, Any]:
    """One pair's result from its repeats (each a :func:`measure` pass, and the Serve app's
    :func:`idle_cpu` before it): medians, where the CPU went, and the verdicts on the goals.

    The layout's CPU per request includes what Ray's processes cost at idle, shared out over the requests
    served: ``background_cpu_ms_per_request`` is that share (idle ms per second over Serve's req/s at
    :data:`CPU_AT` clients), and the rest is what each request adds. On a faster machine, or with more
    requests a second, the share shrinks."""
    served, plained, ceiling_summary = (
        _summarise_runs(serve_runs),
        _summarise_runs(plain_runs),
        repeat_summary(ceilings),
    )
    cpu = _median_cpu(serve_runs)
    forward = float(np.median([run[CPU_AT]["forward_cpu_ms_per_request"] for run in serve_runs]))
    preprocess = float(np.median([run[CPU_AT]["preprocess_cpu_ms_per_request"] for run in serve_runs]))
    layouts = repeat_summary(
        [
            layout_cpu(run[CPU_AT]["cpu_ms_per_request"], run[CPU_AT]["forward_cpu_ms_per_request"])
            for run in serve_runs
        ]
    )
    idle = {
        role: float(np.median([run.get(role, 0.0) for run in idle_runs]))
        for role in {role for run in idle_runs or [] for role in run}
    }
    background = sum(idle.values()) / served[CPU_AT]["req_s"]["median"] if idle else None
    return {
        "pair": pair.what,
        "model_input": pair.size,
        "crop_policies": list(pair.crop_policies),
        "upload": f"{pair.image_size} px {pair.image_format}",
        "upload_bytes_mean": float(np.mean([len(i) for i in images])),
        "in_process_ceiling_img_s": ceiling_summary,
        "ceiling_batch": ceiling_batch,
        "ceiling_torch_threads": ceiling_threads,
        "serve": served,
        "plain_fastapi": plained,
        "serve_runs": serve_runs,
        "plain_runs": plain_runs,
        "cpu_ms_per_request_serve": cpu,
        "cpu_ms_per_request_plain": _median_cpu(plain_runs),
        "forward_cpu_ms_per_request": forward,
        "preprocess_cpu_ms_per_request": preprocess,
        "serve_overhead_cpu_ms_per_request": layouts["median"] - preprocess,
        "layout_cpu_ms_per_request": layouts["median"],
        "layout_cpu_ms_repeats": layouts,
        "idle_cpu_ms_per_s": idle,
        "background_cpu_ms_per_request": background,
        "ratio_serve16_over_ceiling": ratio_verdict(
            served[16]["req_s"], ceiling_summary, GOALS["ceiling"], ("Serve", "ceiling")
        ),
        "ratio_serve16_over_plain16": ratio_verdict(
            served[16]["req_s"], plained[16]["req_s"], GOALS["plain"], ("Serve", "plain FastAPI")
        ),
    }


# -- the report ----------------------------------------------------------------------------------------------
def _rate(s: dict[str, Any]) -> str:
    flag = "" if s["agree"] else " **(repeats disagree)**"
    return f"{s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f}, spread {s['spread']:.0%}){flag}"


def _pair_md(p: dict[str, Any]) -> list[str]:
    rows = [
        f"| in-process batched forward (ceiling, batch {p['ceiling_batch']}) | - | "
        f"{_rate(p['in_process_ceiling_img_s'])} | - | - | {p['ceiling_batch']} |"
    ]
    for name, table in (
        ("Ray Serve ensemble over HTTP", p["serve"]),
        ("plain FastAPI, no batching", p["plain_fastapi"]),
    ):
        for c, r in table.items():
            errors = f" ({r['errors']} errors)" if r["errors"] else ""
            batch = f"{r['mean_batch']:.1f}" if r["mean_batch"] == r["mean_batch"] else "-"  # NaN: none
            rows.append(
                f"| {name} | {c} | {_rate(r['req_s'])}{errors} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} "
                f"| {batch} |"
            )
    return [
        f"### {p['model_input']} px: {p['pair']}, {p['upload']} uploads; ingress {p['ingress']}",
        "",
        "| server | concurrency | req/s median (min-max, spread) | p50 ms | p99 ms | mean batch |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"- Serve at {CPU_AT} / in-process ceiling: {p['ratio_serve16_over_ceiling']['text']}",
        f"- Serve at {CPU_AT} / plain FastAPI at {CPU_AT}: {p['ratio_serve16_over_plain16']['text']}",
        "",
    ]


def _process_table(pairs: dict[str, dict[str, Any]], sizes: list[str], key: str, floor: float) -> list[str]:
    """A table of each Serve process's ``pairs[size][key]`` figure, a column per pair, largest first; a
    process under ``floor`` in every column is left out."""
    roles: dict[str, None] = {}
    for size in sizes:
        for role, _ in sorted(pairs[size][key].items(), key=lambda kv: -kv[1]):
            roles.setdefault(role, None)
    head = "| process (Ray Serve) | " + " | ".join(pair_label(pairs[s]) for s in sizes) + " |"
    rows = [head, "|---|" + "---:|" * len(sizes)]
    for role in roles:
        values = [pairs[s][key].get(role, 0.0) for s in sizes]
        if max(values) >= floor:
            rows.append(f"| {role} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    return rows


def _cpu_md(pairs: dict[str, dict[str, Any]]) -> list[str]:
    sizes = list(pairs)
    rows = _process_table(pairs, sizes, "cpu_ms_per_request_serve", floor=0.3)

    def line(label: str, key: str) -> str:
        return f"| {label} | " + " | ".join(f"{key_of(pairs[s], key):.1f}" for s in sizes) + " |"

    def key_of(p: dict[str, Any], key: str) -> float:
        if key == "added":
            return p["layout_cpu_ms_per_request"] - (p.get("background_cpu_ms_per_request") or 0.0)
        if key == "total":
            return sum(p["cpu_ms_per_request_serve"].values())
        if key == "plain":
            return sum(p["cpu_ms_per_request_plain"].values())
        return p[key]

    rows += [
        line("**all processes**", "total"),
        line("of which forward passes (measured in the model replicas)", "forward_cpu_ms_per_request"),
        line(
            f"**the Serve layout: all but the forward passes and the load driver** "
            f"(goal <= {GOALS['layout_cpu_ms']:.0f})",
            "layout_cpu_ms_per_request",
        ),
        line(
            "of which decoding and transforms (measured in the Preprocessor)", "preprocess_cpu_ms_per_request"
        ),
        line(
            "of which Serve itself: proxy, hops, queues, Ray's processes", "serve_overhead_cpu_ms_per_request"
        ),
        line("plain FastAPI app + load driver, for comparison", "plain"),
    ]
    if all(pairs[s].get("background_cpu_ms_per_request") is not None for s in sizes):
        rows[-1:-1] = [
            line(
                "of the layout, the processes' idle cost shared out (idle ms per second / Serve req/s)",
                "background_cpu_ms_per_request",
            ),
            line("of the layout, what each request adds (the rest)", "added"),
        ]
    return rows


def _idle_md(pairs: dict[str, dict[str, Any]]) -> list[str]:
    """Each Serve process's CPU at idle, ms per second (median of the repeats)."""
    sizes = [s for s in pairs if pairs[s].get("idle_cpu_ms_per_s")]
    if not sizes:
        return []
    rows = [
        f"### The Serve app at idle (CPU ms per second with no requests, {IDLE_S:.0f} s before each repeat)",
        "",
        *_process_table(pairs, sizes, "idle_cpu_ms_per_s", floor=1.0),
    ]
    totals = [sum(pairs[s]["idle_cpu_ms_per_s"].values()) for s in sizes]
    rows += ["| **all processes** | " + " | ".join(f"**{v:.1f}**" for v in totals) + " |", ""]
    return rows


def _ordered(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The measured pairs by model size, then ingress layout (proxy first)."""
    order = list(INGRESS_ENV)
    items = sorted(
        results["pairs"].items(),
        key=lambda kv: (kv[1]["model_input"], order.index(kv[1]["ingress"])),
    )
    return dict(items)


def _layout_lines(pairs: dict[str, dict[str, Any]]) -> list[str]:
    """The verdict on the layout's goal for each pair, and each size's layouts compared."""
    lines = []
    for p in pairs.values():
        layout, repeats = p["layout_cpu_ms_per_request"], p["layout_cpu_ms_repeats"]
        verdict = "met" if layout <= GOALS["layout_cpu_ms"] else "not met"
        if not repeats["agree"]:
            verdict += f"; but the repeats disagree, spread {repeats['spread']:.0%}: not a result"
        lines.append(
            f"- {pair_label(p)}: the layout costs **{layout:.1f} ms** per request (repeats "
            f"{', '.join(f'{v:.1f}' for v in repeats['values'])}; goal <= {GOALS['layout_cpu_ms']:.0f} ms: "
            f"{verdict})"
        )
    by_size: dict[int, dict[str, dict[str, Any]]] = {}
    for p in pairs.values():
        by_size.setdefault(p["model_input"], {})[p["ingress"]] = p
    for size, layouts in by_size.items():
        if {"proxy", "haproxy"} <= set(layouts):
            verdict = ratio_verdict(
                layouts["haproxy"]["layout_cpu_ms_repeats"],
                layouts["proxy"]["layout_cpu_ms_repeats"],
                None,
                ("haproxy", "proxy"),
            )
            lines.append(f"- {size} px: layout CPU per request, haproxy / proxy: {verdict['text']}")
    return lines


def markdown(results: dict[str, Any]) -> str:
    pairs = _ordered(results)
    m = results["machine"]
    lines = [
        "## Serving: Ray Serve vs the in-process ceiling vs plain FastAPI",
        "",
        f"{results['date']}, {m['cpus']} CPUs; untrained lite0 + residual; {results['repeats']} repeats per "
        f"configuration, interleaved (ceiling, plain, Serve, ...); req/s is the median with its range. Same "
        f"preprocessing code in all three. The run took {results['seconds'] / 60:.1f} minutes.",
        "",
    ]
    for p in pairs.values():
        lines += _pair_md(p)
    lines += [
        f"### Where the CPU goes at concurrency {CPU_AT} (CPU ms per answered request, median of repeats)",
        "",
        f"The machine has {m['cpus']} cores: at N req/s all processes together can use at most "
        "1000 x cores / N ms per request.",
        "",
        *_cpu_md(pairs),
        "",
        *_idle_md(pairs),
    ]
    lines += [*_layout_lines(pairs), ""]
    if results.get("profile"):
        lines += [*PROFILE_HEADER, *results["profile"], "", PROFILE_FOOTER, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from datetime import UTC, datetime

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=sorted(PAIRS), choices=sorted(PAIRS))
    parser.add_argument("--repeats", type=int, default=3, help="measurements of each configuration")
    parser.add_argument("--requests", type=int, default=64, help="requests per measurement at concurrency 16")
    parser.add_argument("--out", type=Path, default=Path("reports/bench"))
    parser.add_argument("--profile", action="store_true", help="py-spy the Serve processes at concurrency 16")
    parser.add_argument(
        "--ingress",
        nargs="+",
        default=list(INGRESS_ENV),
        choices=list(INGRESS_ENV),
        help="the Serve ingress layouts to measure, each on its own local Ray (genart.serve.app.INGRESS_ENV)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    pairs = {}
    for size in args.sizes:
        for ingress in args.ingress:
            with tempfile.TemporaryDirectory() as tmp:
                pairs[f"{size}-{ingress}"] = bench_pair(
                    PAIRS[size],
                    args.repeats,
                    args.requests,
                    Path(tmp),
                    args.out / "profile" if args.profile else None,
                    ingress,
                )
    profile_md = []
    for raw in sorted((args.out / "profile").glob("profile-*px-*.txt")) if args.profile else []:
        hot = hottest_functions(raw)
        profile_md.append(
            f"- **{raw.stem.removeprefix('profile-')}**: "
            + "; ".join(f"{name} {share:.0%}" for name, share in hot)
        )
    results = {
        "benchmark": "serve",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "repeats": args.repeats,
        "requests_at_16": args.requests,
        "agreement": AGREEMENT,
        "goals": GOALS,
        "pairs": pairs,
        "profile": profile_md,
        "seconds": time.monotonic() - started,
    }
    md = markdown(results)
    write_results(args.out, "serve", results, md)
    print(md)
    return results


if __name__ == "__main__":
    main()
