"""Serving benchmark: the Serve ensemble over HTTP vs the in-process ceiling vs a plain FastAPI app.

All three run the same two models (the demo's lite0 + residual, or the artefacts given) on the same images,
in one run, on this machine:

- **in-process ceiling**: decode + transform + one batched forward pass per model, no HTTP, no Ray;
- **Serve**: `genart.serve.app` on a local Ray, over HTTP, at concurrency 1, 4 and 16;
- **plain FastAPI**: one uvicorn process with the same models and preprocessing, no batching.

Goals (issue 5): Serve >= 0.8x the ceiling at concurrency 16, and >= 2x the plain app.

Where the time goes: during each concurrency-16 run the CPU seconds of every process involved (the load
driver, the plain app, each Ray Serve actor) are read before and after, and reported as CPU milliseconds per
request. With ``--profile``, py-spy then samples every Serve replica and the proxy during one more, untimed
run at that concurrency: their collapsed stacks and each one's hottest functions go to ``--out``.
"""

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from genart.bench.common import machine, write_results
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

__all__ = ["ceiling", "hottest_functions", "main", "plain_app", "serve_processes"]

PROFILE_HEADER = ["### py-spy: hottest functions per Serve process (share of samples, waiting included)", ""]
PROFILE_FOOTER = "Collapsed stacks: `profile/*.txt` beside this file (open them in speedscope.app)."


def ceiling(artifacts: list[Path], images: list[bytes], batch: int = 16) -> dict[str, Any]:
    """Images/s of decode + transform + batched forward passes, in this process: nothing to serve it."""
    import torch

    from genart.models.artifact import load_artifact
    from genart.serve.deployments import prepare_image, spec_key

    models = [load_artifact(p) for p in artifacts]
    specs = {spec_key(m.spec): m.spec.to_dict() for m in models}

    def run(count: int) -> float:
        start = time.perf_counter()
        for i in range(0, count, batch):
            prepared = [
                prepare_image(images[j % len(images)], specs) for j in range(i, min(i + batch, count))
            ]
            for m in models:
                m.predict_proba(torch.from_numpy(np.stack([p.tensors[spec_key(m.spec)] for p in prepared])))
        return count / (time.perf_counter() - start)

    run(batch)  # warm-up
    return {"img_s": run(len(images) * 2), "batch": batch, "torch_threads": torch.get_num_threads()}


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


def _measure(
    url: str, images: list[bytes], requests: dict[int, int], pids: dict[str, list[int]] | None = None,
    profile_dir: Path | None = None,
) -> dict[int, dict[str, Any]]:  # fmt: skip
    """Throughput and latency per concurrency; at the highest, CPU ms per request of each process in
    ``pids`` (and of this driver), and py-spy profiles of them into ``profile_dir``."""
    asyncio.run(drive(url, images, 4, requests=8))  # warm-up
    results = {}
    top = max(requests)
    for c, n in requests.items():
        watched = {**(pids or {}), "load driver (this process)": [os.getpid()]}
        before = _cpu_seconds(watched)
        results[c] = step_summary(*asyncio.run(drive(url, images, c, requests=n)))
        after = _cpu_seconds(watched)
        if c == top:
            done = results[c]["ok"] or 1
            results[c]["cpu_ms_per_request"] = {
                role: round(1000 * (after[role] - before[role]) / done, 1) for role in watched
            }
    if profile_dir:  # a separate, untimed pass: py-spy's own sampling would slow the measured one
        spies = _start_profiles(pids or {}, profile_dir)
        asyncio.run(drive(url, images, top, requests=requests[top]))
        _stop_profiles(spies)
    return results


def _start_profiles(pids: dict[str, list[int]], out: Path) -> list[tuple[str, subprocess.Popen, Path]]:
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
        name = role.replace("ServeReplica:genart:", "").replace(":", "_")
        raw = out / f"profile-{name}.txt"
        cmd = [spy, "record", "--pid", str(group[0]), "--format", "raw", "--output", str(raw),
               "--rate", "97", "--nonblocking"]  # fmt: skip
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


def _plot(served: dict[int, dict[str, Any]], plain: dict[int, dict[str, Any]], ceiling_img_s: float,
          path: Path) -> Path:  # fmt: skip
    from genart.plots import plt, save_figure

    fig, (lat, thr) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, table, colour in (("Ray Serve", served, "tab:blue"), ("plain FastAPI", plain, "tab:orange")):
        c = sorted(table)
        lat.plot(c, [table[k]["p50_ms"] for k in c], marker="o", color=colour, label=f"{name} p50")
        lat.plot(c, [table[k]["p99_ms"] for k in c], marker="o", ls="--", color=colour, label=f"{name} p99")
        thr.plot(c, [table[k]["req_s"] for k in c], marker="o", color=colour, label=name)
    thr.axhline(ceiling_img_s, color="k", ls=":", label="in-process ceiling")
    for ax in (lat, thr):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.legend(fontsize=7)
    lat.set_ylabel("latency (ms)")
    thr.set_ylabel("requests per second")
    lat.set_title("Latency against concurrency", fontsize=9)
    thr.set_title("Throughput against concurrency", fontsize=9)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--artifacts", nargs="*", help="artefacts to serve (default: untrained lite0 + residual)"
    )
    parser.add_argument("--size", type=int, default=96, help="input size of the default artefacts")
    parser.add_argument("--image-size", type=int, default=160, help="side of the PNGs sent")
    parser.add_argument(
        "--requests", type=int, default=160, help="requests per measurement at concurrency 16"
    )
    parser.add_argument("--out", type=Path, default=Path("reports/bench"))
    parser.add_argument("--profile", action="store_true", help="py-spy the Serve processes at concurrency 16")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    images = bench_images(32, args.image_size)
    requests = {1: max(args.requests // 4, 16), 4: max(args.requests // 2, 16), 16: args.requests}
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = (
            [Path(a) for a in args.artifacts] if args.artifacts else bench_artifacts(Path(tmp), args.size)
        )
        print("in-process ceiling ...", flush=True)
        inproc = ceiling(artifacts, images)

        print("plain FastAPI ...", flush=True)
        port = free_port()
        code = (
            "import sys, uvicorn; from genart.bench.serve import plain_app; "
            f"uvicorn.run(plain_app(sys.argv[1:]), host='127.0.0.1', port={port}, log_level='warning')"
        )
        proc = subprocess.Popen([sys.executable, "-c", code, *map(str, artifacts)])
        try:
            wait_http(f"http://127.0.0.1:{port}/docs")
            plain = _measure(f"http://127.0.0.1:{port}/predict", images, requests, {"plain app": [proc.pid]})
        finally:
            proc.terminate()
            proc.wait(30)

        print("Ray Serve ...", flush=True)
        env = {
            "DATABASE_URL": f"sqlite:///{tmp}/bench.db",
            "GENART_API_KEY": "",
            "GENART_DATA_DIR": f"{tmp}/data",
        }
        with ServeApp(artifacts, env) as app:
            served = _measure(
                f"{app.base}/predict", images, requests, serve_processes(),
                args.out / "profile" if args.profile else None,
            )  # fmt: skip

    results = {
        "benchmark": "serve",
        "machine": machine(),
        "models": [str(a) for a in artifacts]
        if args.artifacts
        else ["lite0 (untrained)", "residual (untrained)"],
        "image_size": args.image_size,
        "in_process_ceiling_img_s": inproc,
        "serve": served,
        "plain_fastapi": plain,
        "ratio_serve16_over_ceiling": served[16]["req_s"] / inproc["img_s"],
        "ratio_serve16_over_plain16": served[16]["req_s"] / plain[16]["req_s"],
    }
    plot = _plot(served, plain, inproc["img_s"], args.out / "serve_latency.png")
    top = max(requests)
    cpu_rows = []
    for name, table in (("Ray Serve", served), ("plain FastAPI", plain)):
        shares = table[top].get("cpu_ms_per_request", {})
        total = sum(shares.values())
        for role, ms in sorted(shares.items(), key=lambda kv: -kv[1]):
            if ms >= 0.5:
                cpu_rows.append(f"| {name} | {role} | {ms:.1f} |")
        cpu_rows.append(f"| {name} | **all of the above** | **{total:.1f}** |")
        results[f"cpu_ms_per_request_{'serve' if name == 'Ray Serve' else 'plain'}"] = total
    profile_md = []
    for raw in sorted((args.out / "profile").glob("profile-*.txt")) if args.profile else []:
        hot = hottest_functions(raw)
        profile_md += [f"- **{raw.stem.removeprefix('profile-')}**: "
                       + "; ".join(f"{name} {share:.0%}" for name, share in hot)]  # fmt: skip
    rows = [f"| in-process batched forward (ceiling) | - | {inproc['img_s']:.1f} | - | - |"]
    for name, table in (("Ray Serve ensemble over HTTP", served), ("plain FastAPI, no batching", plain)):
        for c, r in table.items():
            rows.append(f"| {name} | {c} | {r['req_s']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} |")
    md = "\n".join(
        [
            "## Serving: Ray Serve vs the in-process ceiling vs plain FastAPI",
            "",
            f"Two models ({', '.join(results['models'])}), {args.image_size} px PNG uploads; "
            f"{results['machine']['cpus']} CPUs. Same preprocessing code in all three.",
            "",
            "| server | concurrency | req/s | p50 ms | p99 ms |",
            "|---|---:|---:|---:|---:|",
            *rows,
            "",
            f"Serve at concurrency 16 / in-process ceiling: **{results['ratio_serve16_over_ceiling']:.2f}** "
            "(goal 0.8)",
            f"Serve at concurrency 16 / plain FastAPI at 16: **{results['ratio_serve16_over_plain16']:.2f}** "
            "(goal 2.0)",
            "",
            f"![latency and throughput against concurrency]({plot.name})",
            "",
            f"### Where the CPU goes at concurrency {top} (CPU ms per answered request, by process)",
            "",
            f"The machine has {results['machine']['cpus']} cores: at N req/s the processes below can use at "
            "most 1000 x cores / N ms per request between them.",
            "",
            "| server | process | CPU ms / request |",
            "|---|---|---:|",
            *cpu_rows,
            "",
            *(PROFILE_HEADER + profile_md + ["", PROFILE_FOOTER, ""] if profile_md else []),
        ]
    )  # fmt: skip
    write_results(args.out, "serve", results, md)
    print(md)
    return results


if __name__ == "__main__":
    main()
