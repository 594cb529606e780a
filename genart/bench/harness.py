"""The one harness every serving benchmark runs on: ports, waiting for HTTP, the Serve app, the load driver
and the latency summary.

:mod:`genart.bench.serve` (throughput against the ceiling), :mod:`genart.bench.load` (ramp, soak) and
:mod:`genart.bench.chaos` (faults under load) all start the app with :class:`ServeApp`, send requests with
:func:`drive` and summarise them with :func:`step_summary`, so their figures are measured the same way.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Event",
    "ServeApp",
    "bench_artifacts",
    "bench_images",
    "drive",
    "free_port",
    "percentiles",
    "ray_label",
    "step_summary",
    "wait_http",
]


def free_port(low: int = 20000, high: int = 32767) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, from ``low``-``high``: above Ray's worker ports
    (10002-19999) and below the kernel's ephemeral range (32768 on), from which Ray's own gRPC servers take
    theirs. A port the kernel handed out (bind to 0) could be taken by one of them before the app binds it,
    which failed a test once ("cannot bind socket (Address already in use)")."""
    import random

    ports = range(low, high + 1)
    for port in random.sample(ports, min(200, len(ports))):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port on 127.0.0.1 in {low}-{high}")


def wait_http(url: str, timeout_s: float = 120) -> None:
    """Return once ``url`` answers below 500; TimeoutError after ``timeout_s``."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} never answered")


def bench_images(n: int, size: int, seed: int = 0, image_format: str = "PNG") -> list[bytes]:
    """``n`` images of ``size`` x ``size``: what the benchmarks upload. PNGs are random noise; JPEGs are
    smooth noise (a coarse grid upsampled, plus grain) saved at quality 95, about the size of a photo of
    the same side at that quality, where noise would be several times larger."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buffer = io.BytesIO()
        if image_format.upper() == "PNG":
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
        else:
            coarse = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).resize(
                (size, size), Image.Resampling.BICUBIC
            )
            grain = rng.normal(0, 6, (size, size, 3))
            pixels = np.clip(np.asarray(coarse, dtype=np.float64) + grain, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(buffer, image_format.upper(), quality=95)
        out.append(buffer.getvalue())
    return out


def bench_artifacts(root: Path, size: int, crop_policies: tuple[str, str] = ("crop", "crop")) -> list[Path]:
    """Untrained lite0 + residual at ``size`` px, with the given crop policies (lite0's, residual's): the
    demo's pair by default (both crop); the real recipe's is ("resize", "crop") at 224. Speed does not
    depend on the weights."""
    from genart.models.artifact import ArtifactMeta, save_artifact
    from genart.models.zoo import build_model, get_entry

    paths = []
    for name, policy in zip(("lite0", "residual"), crop_policies, strict=True):
        model, spec = build_model(name, pretrained=False, input_size=size, crop_policy=policy)
        entry = get_entry(name)
        meta = ArtifactMeta(name=name, timm_id=entry.timm_id, residual=entry.residual, input=spec.to_dict())
        paths.append(save_artifact(model, meta, root / name))
    return paths


def ray_label(cmdline: list[str], name: str) -> str | None:
    """The role of a Ray process from its title (``ray::ServeReplica:genart:m0``) or executable."""
    title = cmdline[0].split()[0] if cmdline and cmdline[0] else ""
    if title.startswith("ray::"):
        # The title names the running method too (``ray::ProxyActor.receive_asgi_messages``): drop it, so
        # that one process stays one series.
        if "ServeReplica:" in title:
            title = "ray::" + title[title.index("ServeReplica:") :]
        return re.sub(r"\.[A-Za-z_]\w*$", "", title)
    for known in ("gcs_server", "raylet", "dashboard", "log_monitor", "monitor.py", "runtime_env", "haproxy"):
        if known in name or any(known in part for part in cmdline[:3]):
            return known
    return None


# -- requests and their summary --------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    """One request: when it started and ended (seconds, ``time.monotonic``) and its status code.

    ``status`` 0 means no HTTP response at all (connection refused or reset, timeout): ``error`` names it.
    """

    start: float
    end: float
    status: int
    error: str | None = None

    @property
    def latency_ms(self) -> float:
        return (self.end - self.start) * 1000


def percentiles(latencies_ms: list[float]) -> dict[str, float | None]:
    """p50, p99 and p99.9 (linear interpolation); None for each when there are no latencies."""
    if not latencies_ms:
        return {"p50_ms": None, "p99_ms": None, "p999_ms": None}
    values = np.asarray(latencies_ms, dtype=np.float64)
    p50, p99, p999 = np.percentile(values, [50, 99, 99.9])
    return {"p50_ms": float(p50), "p99_ms": float(p99), "p999_ms": float(p999)}


def step_summary(events: list[Event], elapsed_s: float) -> dict[str, Any]:
    """Throughput of 200s, latency percentiles of the 200s and the count of every status (``"0"``: none)."""
    ok = [e for e in events if e.status == 200]
    codes: dict[str, int] = {}
    for e in events:
        codes[str(e.status)] = codes.get(str(e.status), 0) + 1
    errors = {k: v for k, v in sorted(codes.items()) if k != "200"}
    return {
        "requests": len(events),
        "ok": len(ok),
        "errors": errors,
        "error_rate": (len(events) - len(ok)) / len(events) if events else 0.0,
        "seconds": elapsed_s,
        "req_s": len(ok) / elapsed_s if elapsed_s > 0 else 0.0,
        **percentiles([e.latency_ms for e in ok]),
    }


async def drive(
    url: str,
    images: list[bytes],
    concurrency: int,
    requests: int | None = None,
    seconds: float | None = None,
    stop: threading.Event | None = None,
    timeout_s: float = 120.0,
    events: list[Event] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[list[Event], float]:
    """POST images to ``url`` from ``concurrency`` clients until ``requests`` have been sent, ``seconds``
    have passed or ``stop`` is set, whichever comes first. Returns the events and the seconds taken.

    Connection errors are recorded as status 0 and the client goes on, so it can run while faults happen.
    A caller's ``events`` list fills while the load runs.
    """
    import httpx

    events = [] if events is None else events
    start = time.monotonic()
    deadline = start + seconds if seconds is not None else float("inf")
    counter = iter(range(requests)) if requests is not None else None
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    def next_index(i: int) -> int | None:
        if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
            return None
        return next(counter, None) if counter is not None else i

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, headers=headers or {}) as client:

        async def worker(k: int) -> None:
            i = next_index(k)
            while i is not None:
                t0 = time.monotonic()
                try:
                    response = await client.post(
                        url, files={"file": ("x.png", images[i % len(images)], "image/png")}
                    )
                    events.append(Event(t0, time.monotonic(), response.status_code))
                except httpx.HTTPError as exc:
                    events.append(Event(t0, time.monotonic(), 0, type(exc).__name__))
                    await asyncio.sleep(0.1)  # a refused connection fails at once: don't spin
                i = next_index(i + concurrency)

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return events, time.monotonic() - start


# -- the app under test ----------------------------------------------------------------------------------
@dataclass
class ServeApp:
    """The genart Serve app (``genart.serve.app.compose``) serving ``artifacts`` on a local Ray, bound to
    127.0.0.1 on a free port, with ``env`` in the ingress' environment (its database, API key, log folder).
    Use it as a context manager, or call :meth:`start` and, whatever happens, :meth:`stop`.
    """

    artifacts: list[Path]
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    ingress: str = "proxy"  # genart.serve.app.INGRESS_ENV: "proxy" (Ray's default) or "haproxy"
    _saved_environ: dict[str, str] | None = field(default=None, init=False, repr=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServeApp:
        import ray
        from ray import serve

        from genart.config import ServeConfig, ServeModel
        from genart.serve.app import compose, ingress_environment

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        self._saved_environ = dict(os.environ)
        environ = ingress_environment(self.ingress, dict(os.environ))  # the local Ray's processes inherit it
        os.environ.clear()
        os.environ.update(environ)
        self.port = self.port or free_port()
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        config = ServeConfig(
            models=[ServeModel(name=f"m{i}", artifact=str(a)) for i, a in enumerate(self.artifacts)]
        )
        options = {"ray_actor_options": {"num_cpus": 0.25, "runtime_env": {"env_vars": self.env}}}
        serve.run(compose(config, ingress_options=options), name="genart", route_prefix="/")
        wait_http(f"{self.base}/health")
        return self

    def stop(self) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            if self._saved_environ is not None:
                os.environ.clear()
                os.environ.update(self._saved_environ)

    def __enter__(self) -> ServeApp:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
