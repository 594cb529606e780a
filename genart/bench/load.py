"""Load test of the Serve app: steady load, a ramp to saturation and a soak, with nothing lost.

Runs against a Serve app it starts itself on a local Ray, on loopback only, with a fresh PostgreSQL
database (``genart_load_<hex>`` on the server at ``DATABASE_URL``) that is dropped afterwards. Phases:

- **steady**: a fixed number of clients for a fixed time;
- **ramp**: concurrency 1, 2, 4, 8, 16, 32; throughput and p50/p99/p99.9 per step. Saturation is the
  step after which throughput stops rising;
- **soak**: 10 minutes at the steady concurrency (skipped with ``--short``).

The RSS of every process of this run's Ray cluster (GCS, raylet, Serve controller, proxy, each replica) is
sampled every 2 s and growth is flagged. After each phase the store's buffer is drained (``/health``) and the
rows in PostgreSQL are compared with the 200 responses: every prediction answered must be stored.

The app, the load driver and the latency summary come from :mod:`genart.bench.harness`; ``ServeHarness``
(the app plus its database) and ``RssSampler`` here are shared with :mod:`genart.bench.chaos`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from genart.bench.common import machine, write_results
from genart.bench.harness import (
    Event,
    ServeApp,
    bench_artifacts,
    bench_images,
    drive,
    ray_label,
    step_summary,
)

__all__ = [
    "DEFAULT_DATABASE_URL",
    "RssSampler",
    "ServeHarness",
    "fresh_database",
    "lost_predictions",
    "main",
    "memory_growth",
    "saturation",
    "serve_harness",
]

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RAMP = (1, 2, 4, 8, 16, 32)


# -- pure parts: what the tests cover -----------------------------------------------------------------
def saturation(steps: list[dict[str, Any]], rise: float = 0.05) -> dict[str, Any]:
    """Where throughput stops rising: the lowest concurrency within ``rise`` (5 %) of the peak throughput.

    ``steps`` are ramp steps with ``concurrency`` and ``req_s``. Judging against the peak rather than the next
    step keeps one noisy dip from being read as saturation. ``reached`` is False when that step is the ramp's
    last, so the app may not have saturated yet.
    """
    ordered = sorted(steps, key=lambda s: s["concurrency"])
    if not ordered:
        return {"concurrency": None, "req_s": None, "reached": False}
    peak = max(ordered, key=lambda s: s["req_s"])
    here = next(s for s in ordered if s["req_s"] >= peak["req_s"] * (1 - rise))
    if here is ordered[-1]:
        return {"concurrency": here["concurrency"], "req_s": here["req_s"], "reached": False}
    return {
        "concurrency": here["concurrency"],
        "req_s": here["req_s"],
        "reached": True,
        "peak_req_s": peak["req_s"],
        "peak_concurrency": peak["concurrency"],
    }


def lost_predictions(ok_responses: int, rows: int, buffered: int | None = 0) -> dict[str, Any]:
    """Compare the 200 responses with the rows stored.

    ``lost`` counts answered predictions missing from the database (goal 0); ``extra``, rows no 200 accounts
    for (stored, but the answer never reached the client); ``drained`` is False when the buffer still held
    records, so the count is not final."""
    return {
        "ok_responses": ok_responses,
        "rows": rows,
        "lost": max(ok_responses - rows, 0),
        "extra": max(rows - ok_responses, 0),
        "buffered": buffered,
        "drained": buffered == 0,
        "ok": rows == ok_responses and buffered == 0,
    }


def memory_growth(
    samples: list[tuple[float, float]], min_mb: float = 50.0, min_fraction: float = 0.10
) -> dict[str, Any]:
    """Growth of one process' RSS over ``(t_s, rss_mb)`` samples: median of the last quarter minus median
    of the first quarter after the first 20 % (start-up: imports, model loads). Flagged when it grew by
    more than ``min_mb`` and ``min_fraction``."""
    if len(samples) < 5:
        peak = max((mb for _, mb in samples), default=None)
        return {
            "start_mb": None,
            "end_mb": None,
            "peak_mb": peak,
            "growth_mb": None,
            "flag": False,
            "samples": len(samples),
        }
    rss = [mb for _, mb in sorted(samples)]
    settled = rss[len(rss) // 5 :]
    quarter = max(len(settled) // 4, 1)
    start, end = float(np.median(settled[:quarter])), float(np.median(settled[-quarter:]))
    growth = end - start
    return {
        "start_mb": start,
        "end_mb": end,
        "peak_mb": float(max(rss)),
        "growth_mb": growth,
        "flag": growth > min_mb and growth > min_fraction * start,
        "samples": len(samples),
    }


# -- memory of this run's Ray processes ---------------------------------------------------------------
class RssSampler:
    """Samples, every ``period_s``, the RSS of each Ray process started under this one.

    Only this process' descendants count: other Ray clusters may be running on the machine. A process is
    keyed by its role and pid, so a replica that is killed and replaced shows as two series.
    """

    def __init__(self, period_s: float = 2.0) -> None:
        self.period_s = period_s
        self.t0 = time.monotonic()
        self.series: dict[str, list[tuple[float, float]]] = {}
        self._labels: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> None:
        import psutil

        now = time.monotonic() - self.t0
        for proc in psutil.Process(os.getpid()).children(recursive=True):
            try:
                label = ray_label(proc.cmdline(), proc.name())
                if label is None:
                    continue
                rss = proc.memory_info().rss / 2**20
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            self._labels.setdefault(proc.pid, label)
            key = f"{self._labels[proc.pid]} [{proc.pid}]"
            self.series.setdefault(key, []).append((round(now, 1), round(rss, 1)))

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.sample()

    def start(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def report(self) -> dict[str, Any]:
        return {
            key: {**memory_growth(points), "series": points}
            for key, points in sorted(self.series.items())
            if not key.startswith("ray::IDLE")
        }


# -- the app under test --------------------------------------------------------------------------------
@contextmanager
def fresh_database(base_url: str, prefix: str) -> Iterator[str]:
    """A fresh database ``<prefix>_<hex>`` on the PostgreSQL server at ``base_url``, dropped afterwards."""
    from sqlalchemy import create_engine, make_url, text
    from sqlalchemy.pool import NullPool

    from genart.serve.store import normalise_url

    server = make_url(normalise_url(base_url))
    if server.get_backend_name() != "postgresql":
        raise SystemExit(f"DATABASE_URL must point at PostgreSQL for the load test, not {base_url!r}")
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = create_engine(
        server, isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"connect_timeout": 3}
    )
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception:
        admin.dispose()
        raise
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        for _ in range(30):  # after the PostgreSQL outage the server may still be starting
            try:
                with admin.connect() as connection:
                    connection.execute(
                        text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                        {"n": name},
                    )
                    connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
                break
            except Exception:
                time.sleep(1)
        admin.dispose()


@dataclass
class ServeHarness:
    """The genart app (two untrained models, :class:`~genart.bench.harness.ServeApp`) writing to
    ``database_url``, with the counts that tell whether every answered prediction was stored."""

    database_url: str
    root: Path
    size: int = 96
    images: list[bytes] = field(default_factory=list)
    ok_total: int = 0
    app: ServeApp | None = None

    @property
    def base(self) -> str:
        assert self.app is not None, "start the harness first"
        return self.app.base

    def start(self) -> ServeHarness:
        self.images = bench_images(16, 160)
        env = {
            "DATABASE_URL": self.database_url,
            "GENART_API_KEY": "",
            "GENART_LOG_DIR": str(self.root / "logs"),
            "GENART_DATA_DIR": str(self.root / "data"),
        }
        self.app = ServeApp(bench_artifacts(self.root, self.size), env)
        self.app.start()
        return self

    def stop(self) -> None:
        if self.app is not None:
            self.app.stop()

    def run(
        self,
        concurrency: int,
        seconds: float | None,
        stop: threading.Event | None = None,
        events: list[Event] | None = None,
    ) -> tuple[list[Event], float]:
        events, elapsed = asyncio.run(
            drive(
                f"{self.base}/predict", self.images, concurrency, seconds=seconds, stop=stop,
                timeout_s=30.0, events=events,
            )
        )  # fmt: skip
        self.ok_total += sum(e.status == 200 for e in events)
        return events, elapsed

    def health(self) -> dict[str, Any] | None:
        import httpx

        try:
            return httpx.get(f"{self.base}/health", timeout=10).json()
        except (httpx.HTTPError, ValueError):
            return None

    def buffered(self) -> int | None:
        body = self.health()
        try:
            return int(body["parts"]["store"]["detail"]["buffered"])  # type: ignore[index]
        except (TypeError, KeyError, ValueError):
            return None

    def rows(self) -> int:
        from genart.serve.store import PredictionStore

        store = PredictionStore(self.database_url)
        try:
            return store.count()
        finally:
            store.dispose()

    def check_stored(self, timeout_s: float = 90.0) -> dict[str, Any]:
        """Wait for the store's buffer to drain, then compare rows with every 200 so far."""
        deadline = time.monotonic() + timeout_s
        buffered = self.buffered()
        while buffered != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            buffered = self.buffered()
        rows = -1
        while time.monotonic() < deadline + 30:
            try:
                rows = self.rows()
                break
            except Exception:
                time.sleep(1)
        return lost_predictions(self.ok_total, rows, buffered)


@contextmanager
def serve_harness(root: Path, prefix: str) -> Iterator[ServeHarness]:
    base = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    with fresh_database(base, prefix) as url:
        harness = ServeHarness(url, root)
        try:
            yield harness.start()
        finally:
            harness.stop()


# -- the run ---------------------------------------------------------------------------------------------
def _phase(
    harness: ServeHarness, name: str, concurrency: int, seconds: float, log: Callable[[str], None]
) -> dict[str, Any]:
    events, elapsed = harness.run(concurrency, seconds)
    summary = {"phase": name, "concurrency": concurrency, **step_summary(events, elapsed)}
    log(
        f"{name:>9} c={concurrency:<3} {summary['req_s']:6.1f} req/s  p50 {_ms(summary['p50_ms'])}  "
        f"p99 {_ms(summary['p99_ms'])}  p99.9 {_ms(summary['p999_ms'])}  errors {summary['errors'] or 0}"
    )
    return summary


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:6.0f} ms"


def _plot(ramp: list[dict[str, Any]], memory: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = [s["concurrency"] for s in ramp]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
        axes[0].plot(c, [s[key] or np.nan for s in ramp], marker="o", label=label)
    axes[0].set(xscale="log", yscale="log", xlabel="concurrency", ylabel="latency (ms)", title="Latency")
    axes[0].legend()
    axes[1].plot(c, [s["req_s"] for s in ramp], marker="o")
    axes[1].set(xscale="log", xlabel="concurrency", ylabel="200s per second", title="Throughput")
    for key, m in memory.items():
        if m["series"] and m["peak_mb"] and m["peak_mb"] > 100:
            t, rss = zip(*m["series"], strict=True)
            axes[2].plot(t, rss, label=key.split(" [")[0].replace("ray::", ""))
    axes[2].set(xlabel="seconds", ylabel="RSS (MiB)", title="Ray processes over 100 MiB")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xticks(c) if ax is not axes[2] else None
        ax.grid(alpha=0.3)
    axes[0].set_xticklabels(c)
    axes[1].set_xticklabels(c)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(results: dict[str, Any]) -> str:
    rows = [
        f"| {s['phase']} | {s['concurrency']} | {s['seconds']:.0f} | {s['req_s']:.1f} | {_ms(s['p50_ms'])} | "
        f"{_ms(s['p99_ms'])} | {_ms(s['p999_ms'])} | {s['errors'] or '-'} |"
        for s in results["phases"]
    ]
    sat = results["saturation"]
    mem = [
        f"| {k} | {m['start_mb'] or 0:.0f} | {m['end_mb'] or 0:.0f} | {m['growth_mb'] or 0:+.0f} | "
        f"{'**growth**' if m['flag'] else 'ok'} |"
        for k, m in results["memory"].items()
        if m["samples"] >= 5
    ]
    checks = [
        f"| {name} | {c['ok_responses']} | {c['rows']} | {c['lost']} | {c['extra']} | {c['buffered']} |"
        for name, c in results["stored"].items()
    ]
    m = results["machine"]
    return "\n".join(
        [
            "## Load: steady, ramp to saturation, soak",
            "",
            f"{results['date']}, {m['cpus']} CPUs, {m.get('memory_gib', '?')} GiB; two untrained models "
            f"(lite0 + residual at {results['model_input']} px), {results['image_size']} px PNG uploads, "
            f"Serve on 127.0.0.1, PostgreSQL store. {'Short run (no soak).' if results['short'] else ''}",
            "",
            "| phase | concurrency | s | 200/s | p50 | p99 | p99.9 | errors by status |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
            *rows,
            "",
            f"Saturation: throughput stops rising after concurrency **{sat['concurrency']}** "
            f"({sat['req_s']:.1f} req/s)"
            + ("" if sat["reached"] else " (not reached within the ramp)")
            + ".",
            f"Steady load held: **{results['held_req_s']:.1f} req/s** at concurrency "
            f"{results['steady_concurrency']} with {results['steady_error_rate']:.1%} errors.",
            "",
            "![latency and throughput vs concurrency](load.png)",
            "",
            "### Nothing lost: PostgreSQL rows vs 200 responses (after the buffer drained)",
            "",
            "| after | 200s | rows | lost | extra | buffered |",
            "|---|---:|---:|---:|---:|---:|",
            *checks,
            "",
            "### RSS of the Ray processes (sampled every 2 s; growth = last quarter - first, after start-up)",
            "",
            "| process | start MiB | end MiB | growth | |",
            "|---|---:|---:|---:|---|",
            *mem,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short", action="store_true", help="short phases and no soak (under ~2 minutes)")
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument("--concurrency", type=int, default=4, help="clients in the steady and soak phases")
    parser.add_argument("--soak-s", type=float, default=600.0, help="soak length (not with --short)")
    args = parser.parse_args(argv)
    import tempfile

    steady_s, step_s = (12.0, 5.0) if args.short else (60.0, 30.0)
    phases: list[dict[str, Any]] = []
    stored: dict[str, dict[str, Any]] = {}
    log = lambda line: print(line, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp, serve_harness(Path(tmp), "genart_load") as harness:
        sampler = RssSampler().start()
        try:
            harness.run(2, 3.0)  # warm-up: first batches, connection pools
            phases.append(_phase(harness, "steady", args.concurrency, steady_s, log))
            stored["steady"] = harness.check_stored()
            ramp = [_phase(harness, "ramp", c, step_s, log) for c in RAMP]
            phases.extend(ramp)
            stored["ramp"] = harness.check_stored()
            if not args.short:
                phases.append(_phase(harness, "soak", args.concurrency, args.soak_s, log))
                stored["soak"] = harness.check_stored()
        finally:
            sampler.stop()
    memory = sampler.report()
    sat = saturation(ramp)
    steady = phases[0]
    results = {
        "benchmark": "load",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "short": args.short,
        "model_input": harness.size,
        "image_size": 160,
        "steady_concurrency": args.concurrency,
        "held_req_s": steady["req_s"],
        "steady_error_rate": steady["error_rate"],
        "phases": phases,
        "saturation": sat,
        "stored": stored,
        "lost": sum(c["lost"] for c in list(stored.values())[-1:]),
        "memory": memory,
        "memory_flags": [k for k, m in memory.items() if m["flag"]],
    }
    md = markdown(results)
    write_results(args.out, "load", results, md)
    _plot(ramp, memory, args.out / "load.png")
    for name, check in stored.items():
        log(f"stored after {name}: {check}")
    log(f"saturation: {sat}")
    log(f"memory growth flagged: {results['memory_flags'] or 'none'}")
    log(f"wrote {args.out / 'load.json'}, {args.out / 'load.md'}, {args.out / 'load.png'}")
    return results


if __name__ == "__main__":
    outcome = main()
    # CI runs the short mode: a lost or undrained prediction fails it.
    raise SystemExit(0 if outcome["lost"] == 0 and all(v["ok"] for v in outcome["stored"].values()) else 1)
