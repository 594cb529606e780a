"""GPU check: what one GPU does with genart, in one script that finishes within 8 minutes.

1. ``nvidia-smi``: the GPU, its memory and driver.
2. Ray Train: ``efficientnet_b3`` at 224 px with mixed precision, one GPU worker, on generated data; the
   efficientnet_b3 recipe (``jobs/configs/efficientnet_b3.yaml``) without pretrained weights, which speed
   does not depend on. Images/s of the epochs after the first.
3. Serve: the genart app from ``serve_config.yaml`` with ``num_gpus`` on each model deployment, serving
   lite0 + residual at 224 px with the real recipe's input policies (untrained), driven over HTTP at
   concurrency 64: req/s, p50, p99.
4. The in-process GPU ceiling on the same models: the replicas' own forward code
   (``LoadedModel.predict_proba``) on batches of prepared tensors, in this process: no decoding, no hops.

It prints one summary table and writes it to ``reports/bench/gpu.md`` (and ``gpu.json``).

Without a GPU (no ``nvidia-smi``, or a torch that sees no CUDA device) it says so and runs the same steps as
a dry run: the same config building, the same Serve config with ``num_gpus`` 0, tiny sizes on the CPU. It
then writes ``gpu-dry.md`` (a real report is never overwritten by a dry one) and exits 0; its figures are
not measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from genart.bench.common import generated_manifest, machine, write_results
from genart.bench.harness import bench_artifacts, bench_images, drive, free_port, step_summary
from genart.config import GenartConfig, load_config

__all__ = ["Plan", "gpu_status", "main", "serve_config", "train_config"]

#: The whole check must fit in this on a single GPU.
BUDGET_S = 480
MODELS = ("lite0", "residual")
#: The real recipe's input policies of those two (jobs/configs/real-lite0.yaml, real-residual.yaml).
RECIPE_POLICIES = ("resize", "crop")


@dataclass(frozen=True)
class Plan:
    """Sizes and resources of every step: the real check on a GPU, or its dry run on the CPU."""

    dry: bool
    train_size: int  # efficientnet_b3's input, px
    synth_size: int  # side of the generated images it trains on
    images_per_class: int  # generated images per generator x label (7 generators)
    epochs: int
    batch_size: int  # per worker
    cpus_per_worker: float | None  # None: the recipe's
    serve_size: int  # input of the served models
    upload_size: int  # side of the PNGs sent
    concurrency: int
    requests: int
    num_gpus: float  # on each model deployment
    reserve_memory: bool  # keep serve_config.yaml's memory reservations
    ceiling_batch: int
    ceiling_batches: int

    @classmethod
    def for_gpu(cls, gpus: int = 1) -> Plan:
        return cls(
            dry=False, train_size=224, synth_size=256, images_per_class=150, epochs=4, batch_size=64,
            cpus_per_worker=None, serve_size=224, upload_size=256, concurrency=64, requests=1920,
            num_gpus=min(1.0, gpus / len(MODELS)), reserve_memory=True, ceiling_batch=64, ceiling_batches=40,
        )  # fmt: skip

    @classmethod
    def for_dry_run(cls) -> Plan:
        return cls(
            dry=True, train_size=32, synth_size=48, images_per_class=2, epochs=2, batch_size=4,
            cpus_per_worker=0.5, serve_size=32, upload_size=48, concurrency=4, requests=12,
            num_gpus=0.0, reserve_memory=False, ceiling_batch=2, ceiling_batches=2,
        )  # fmt: skip


def gpu_status(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> tuple[int, str]:
    """How many GPUs torch can use here, and what ``nvidia-smi`` says (or why there is nothing to use)."""
    import torch

    if shutil.which("nvidia-smi") is None:
        return 0, "nvidia-smi: not found (no NVIDIA driver on this machine)"
    smi = run(["nvidia-smi"], capture_output=True, text=True, timeout=60)
    if smi.returncode != 0:
        return 0, f"nvidia-smi failed (exit {smi.returncode}): {(smi.stderr or smi.stdout).strip()[-500:]}"
    if not torch.cuda.is_available():
        return 0, smi.stdout + f"\ntorch {torch.__version__} sees no CUDA device (a CPU build, or no driver)"
    return torch.cuda.device_count(), smi.stdout


def _gpu_line(status: str) -> str:
    import torch

    if not torch.cuda.is_available():
        return status.strip().splitlines()[-1]
    props = torch.cuda.get_device_properties(0)
    return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"


# -- Ray Train ----------------------------------------------------------------------------------------------
def train_config(plan: Plan, recipe: Path, storage: Path) -> GenartConfig:
    """The efficientnet_b3 recipe, shortened: one worker, no pretrained weights, no early stop."""
    overrides = [
        "model.pretrained=false", f"model.input_size={plan.train_size}", "train.num_workers=1",
        f"train.use_gpu={str(not plan.dry).lower()}", "train.mixed_precision=true",
        f"train.epochs={plan.epochs}", "train.probe_epochs=0", "train.warmup_epochs=0",
        "train.early_stop_patience=0", f"train.batch_size={plan.batch_size}", "train.keep_checkpoints=1",
        "train.max_failures=0", f"train.storage_path={storage}",
    ]  # fmt: skip
    if plan.cpus_per_worker is not None:
        overrides.append(f"train.cpus_per_worker={plan.cpus_per_worker}")
    return load_config(recipe, overrides=overrides, environ={})


def train_step(plan: Plan, recipe: Path, work: Path) -> dict[str, Any]:
    import torch

    from genart.data.pipeline import select_rows
    from genart.train.trainer import build_trainer

    manifest = generated_manifest(work / "data", plan.images_per_class, plan.synth_size)
    config = train_config(plan, recipe, work / "runs")
    result = build_trainer(config, manifest, run_name=f"gpu-check-{time.time_ns()}").fit()
    rates = [m["train_img_s"] for m in result.return_value]
    amp = "off (CPU)" if plan.dry else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    return {
        "model": config.model.name,
        "input_size": config.model.input_size,
        "batch_size": config.train.batch_size,
        "images": len(select_rows(manifest, "train")),
        "mixed_precision": amp,
        "epochs_img_s": rates,
        "img_s": statistics.median(rates[1:] or rates),
    }


# -- Serve --------------------------------------------------------------------------------------------------
def serve_config(
    base: Path, artifacts: dict[str, Path], port: int, plan: Plan, env: dict[str, str]
) -> dict[str, Any]:
    """``base`` (serve_config.yaml) serving ``artifacts`` on ``port``: each model deployment gets its artefact
    and ``plan.num_gpus``; no ensemble artefact; room for ``plan.concurrency`` requests in flight; ``env`` in
    the app's runtime environment."""
    config = yaml.safe_load(base.read_text())
    config["http_options"]["port"] = port
    (app,) = config["applications"]
    runtime_env = app.get("runtime_env") or {}
    app["runtime_env"] = {**runtime_env, "env_vars": {**(runtime_env.get("env_vars") or {}), **env}}
    app["args"]["models"] = [{"name": name} for name in artifacts]
    deployments = {d["name"]: d for d in app["deployments"]}
    missing = sorted(set(artifacts) - set(deployments))
    if missing:
        raise ValueError(f"{base} has no deployment for the models {missing}")
    for name, path in artifacts.items():
        deployments[name]["user_config"]["artifact"] = str(path)
        deployments[name].setdefault("ray_actor_options", {})["num_gpus"] = plan.num_gpus
    ingress = deployments["EnsembleIngress"]
    ingress.setdefault("user_config", {})["ensemble"] = None
    # Every client's request in flight at once: the ingress would answer 503 past max_in_flight, which must
    # stay under its max_ongoing_requests.
    app["args"]["max_in_flight"] = max(app["args"].get("max_in_flight", 0), plan.concurrency)
    ingress["max_ongoing_requests"] = max(ingress.get("max_ongoing_requests", 0), plan.concurrency + 16)
    if not plan.reserve_memory:  # tiny models on a shared machine: Ray need not set memory aside
        for d in deployments.values():
            d.get("ray_actor_options", {}).pop("memory", None)
    return config


def serve_step(plan: Plan, artifacts: dict[str, Path], base: Path, dashboard_port: int, work: Path):
    from genart.serve.control import ServeEndpoints, deploy, shutdown, wait_ready

    port = free_port()
    env = {"DATABASE_URL": f"sqlite:///{work}/gpu-check.db", "GENART_API_KEY": "",
           "GENART_DATA_DIR": str(work / "state")}  # fmt: skip
    work.mkdir(parents=True, exist_ok=True)
    path = work / "serve_config.yaml"
    path.write_text(yaml.safe_dump(serve_config(base, artifacts, port, plan, env), sort_keys=False))
    endpoints = ServeEndpoints(dashboard_port=dashboard_port, http_port=port)
    images = bench_images(32, plan.upload_size)
    try:
        deploy(path, endpoints)
        wait_ready(endpoints, timeout_s=240)
        url = f"{endpoints.api}/predict"
        asyncio.run(drive(url, images, plan.concurrency, requests=plan.concurrency * 2))  # warm-up
        summary = step_summary(*asyncio.run(drive(url, images, plan.concurrency, requests=plan.requests)))
    finally:
        shutdown(endpoints, stop_ray=False)
    return {"concurrency": plan.concurrency, "num_gpus_per_model": plan.num_gpus, **summary}


def ceiling_step(plan: Plan, artifacts: dict[str, Path], device: str) -> dict[str, Any]:
    """Both models' forward passes on batches of prepared tensors, the replicas' code, in this process."""
    import torch

    from genart.models.artifact import load_artifact
    from genart.serve.deployments import prepare_image, spec_key

    models = [load_artifact(p, device=device) for p in artifacts.values()]
    specs = {spec_key(m.spec): m.spec.to_dict() for m in models}
    prepared = [prepare_image(data, specs) for data in bench_images(plan.ceiling_batch, plan.upload_size)]
    batches = [torch.from_numpy(np.stack([p.tensors[spec_key(m.spec)] for p in prepared])) for m in models]

    def run(count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            for model, batch in zip(models, batches, strict=True):
                model.predict_proba(batch)  # to the device and back, as in a replica
        return count * plan.ceiling_batch / (time.perf_counter() - start)

    with torch.inference_mode():
        run(1)  # warm-up: CUDA context, cuDNN's choice of kernels
        return {"batch": plan.ceiling_batch, "device": device, "img_s": run(plan.ceiling_batches)}


# -- the report ---------------------------------------------------------------------------------------------
def _steady_epochs(epochs: int) -> str:
    return "epoch 2" if epochs == 2 else f"median of epochs 2-{epochs}"


def markdown(results: dict[str, Any]) -> str:
    t, s, c = results["train"], results["serve"], results["ceiling"]
    dry = results["dry_run"]
    head = [
        "## GPU check" + (" (dry run: no GPU, tiny sizes on the CPU, not a measurement)" if dry else ""),
        "",
    ]
    rows = [
        f"| GPU | `nvidia-smi` | {results['gpu']} |",
        f"| Ray Train, 1 {'CPU' if dry else 'GPU'} worker | {t['model']} at {t['input_size']} px, batch "
        f"{t['batch_size']}, mixed precision {t['mixed_precision']}, {t['images']} generated images | "
        f"**{t['img_s']:.1f} img/s** ({_steady_epochs(len(t['epochs_img_s']))}) |",
        f"| Ray Serve over HTTP | {' + '.join(MODELS)} at {results['serve_size']} px, num_gpus "
        f"{s['num_gpus_per_model']:g} per model deployment, concurrency {s['concurrency']}, {s['requests']} "
        f"requests ({s['ok']} ok) | **{s['req_s']:.1f} req/s**, p50 {s['p50_ms']:.0f} ms, p99 "
        f"{s['p99_ms']:.0f} ms |",
        f"| in-process ceiling | the same models' forward passes on {c['device']}, batches of {c['batch']} | "
        f"**{c['img_s']:.1f} img/s** |",
        f"| Serve / ceiling | | {s['req_s'] / c['img_s']:.2f} |",
    ]
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in results["seconds"].items())
    within = results["total_s"] <= BUDGET_S
    return "\n".join(
        [
            *head,
            "| step | what | figure |",
            "|---|---|---|",
            *rows,
            "",
            f"Wall time {results['total_s']:.0f} s ({timing}); budget {BUDGET_S} s: "
            f"{'within' if within else 'OVER'}.",
            "",
        ]
    )


def _timed(seconds: dict[str, float], name: str, step: Callable[[], Any]) -> Any:
    print(f"{name} ...", flush=True)
    start = time.perf_counter()
    out = step()
    seconds[name] = time.perf_counter() - start
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("reports/bench"))
    parser.add_argument("--dry-run", action="store_true", help="the CPU-side dry run even with a GPU")
    parser.add_argument("--recipe", type=Path, default=Path("jobs/configs/efficientnet_b3.yaml"))
    parser.add_argument("--serve-config", type=Path, default=Path("serve_config.yaml"))
    parser.add_argument(
        "--dashboard-port", type=int, help="deploy to the running Ray of this process at this dashboard port"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    started = time.perf_counter()
    gpus, status = gpu_status()
    print(status, flush=True)
    if gpus == 0:
        print("No GPU here: a dry run of the CPU-side steps (tiny sizes, num_gpus 0); no figure is a result.")
    plan = Plan.for_dry_run() if gpus == 0 or args.dry_run else Plan.for_gpu(gpus)
    seconds: dict[str, float] = {}
    own_ray = not ray.is_initialized()
    if not own_ray and args.dashboard_port is None:
        raise SystemExit("Ray is already running in this process: pass its --dashboard-port")
    dashboard_port = args.dashboard_port or free_port()
    if own_ray:
        ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
                 dashboard_port=dashboard_port, log_to_driver=False, configure_logging=False)  # fmt: skip
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            train = _timed(seconds, "train", lambda: train_step(plan, args.recipe, work / "train"))
            models = bench_artifacts(work / "models", plan.serve_size, RECIPE_POLICIES)
            artifacts = dict(zip(MODELS, models, strict=True))
            serve = _timed(
                seconds, "serve",
                lambda: serve_step(plan, artifacts, args.serve_config, dashboard_port, work / "serve"),
            )  # fmt: skip
            device = "cpu" if plan.dry else "cuda"
            ceiling = _timed(seconds, "ceiling", lambda: ceiling_step(plan, artifacts, device))
    finally:
        if own_ray:
            ray.shutdown()
    results = {
        "benchmark": "gpu",
        "dry_run": plan.dry,
        "machine": machine(),
        "gpu": _gpu_line(status),
        "nvidia_smi": status,
        "plan": asdict(plan),
        "serve_size": plan.serve_size,
        "train": train,
        "serve": serve,
        "ceiling": ceiling,
        "seconds": seconds,
        "total_s": time.perf_counter() - started,
    }
    md = markdown(results)
    write_results(args.out, "gpu-dry" if plan.dry else "gpu", results, md)
    print(md)
    return results


if __name__ == "__main__":
    main()
