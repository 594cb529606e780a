"""Faults under traffic: does the Serve app keep answering, recover, and lose no prediction?

Each scenario runs a background client (a few concurrent clients, as :mod:`genart.bench.load`) against a
Serve app on a local Ray with a fresh PostgreSQL database, injects one fault, and records the error rate
during the fault, the time to recover (from the fault until the first 200 after which no error follows)
and whether anything was lost (PostgreSQL rows == 200 responses once the store's buffer drained):

1. a model replica killed through the actor API (Serve replaces it);
2. the Serve controller killed (Ray restarts it; the proxy and replicas keep serving);
3. PostgreSQL stopped for 30 s (20 s with ``--short``): the ingress buffers, then drains;
3b. PostgreSQL stopped and, while the ingress buffers, the ingress replica killed with SIGKILL: what it had
   answered is in its spool on disk (SQLite, WAL), and the replacement replica replays it;
4. a training worker killed mid-epoch: the pytest node that checks resuming from the last checkpoint
   (skipped with ``--short`` unless ``--with-train``: it alone takes minutes on 2 cores);
5. ``/dev/shm`` nearly full while traffic runs. ``/dev/shm`` is RAM-backed, so the fill is capped to keep
   ``--shm-headroom-gib`` of memory available: on a machine whose ``/dev/shm`` is larger than its free
   memory it is filled only as far as that cap, and the report says so.

Scenarios 3 and 3b stop the machine's PostgreSQL cluster (it always restarts it in a ``finally``), so don't
run them beside other work that needs that server.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from genart.bench.common import machine, write_results
from genart.bench.harness import Event, step_summary
from genart.bench.load import ServeHarness, serve_harness

__all__ = ["fault_stats", "main", "shm_fill_bytes"]

CONCURRENCY = 3  # background clients in every scenario
STEADY_S = 3.0  # no error for this long after the fault counts as recovered


# -- pure parts ----------------------------------------------------------------------------------------
def fault_stats(events: list[Event], fault_start: float, fault_end: float) -> dict[str, Any]:
    """Error rate while the fault lasted and time to recover from its start.

    A request belongs to the fault window if it started within ``[fault_start, fault_end]``. Recovery is the
    first 200 that started at or after the last failed request (any status but 200) started at or after
    ``fault_start``; ``recovery_s`` is measured from ``fault_start`` and is 0 when nothing failed.
    ``recovered`` is False when there is no 200 after the last failure.
    """
    during = [e for e in events if fault_start <= e.start <= fault_end]
    after = sorted((e for e in events if e.start >= fault_start), key=lambda e: e.start)
    failures = [e for e in after if e.status != 200]
    stats = {
        "during": step_summary(during, fault_end - fault_start),
        "errors_after_fault": len(failures),
        "first_error_s": failures[0].start - fault_start if failures else None,
        "last_error_s": failures[-1].start - fault_start if failures else None,
    }
    if not failures:
        return {**stats, "recovered": True, "recovery_s": 0.0}
    last_failure = failures[-1].start
    first_ok = next((e for e in after if e.status == 200 and e.start >= last_failure), None)
    if first_ok is None:
        return {**stats, "recovered": False, "recovery_s": None}
    return {**stats, "recovered": True, "recovery_s": first_ok.end - fault_start}


def shm_fill_bytes(shm_free: int, mem_available: int, leave_free: int, headroom: int) -> tuple[int, bool]:
    """How much to write to ``/dev/shm``: enough to leave ``leave_free`` bytes, but never so much that the
    machine's available memory drops under ``headroom`` (tmpfs lives in RAM). True when that cap applied."""
    wanted = max(shm_free - leave_free, 0)
    allowed = max(mem_available - headroom, 0)
    return min(wanted, allowed), allowed < wanted


# -- traffic in the background ---------------------------------------------------------------------------
class Traffic:
    """The load driver in a thread of its own until ``stop``; events carry ``time.monotonic`` times."""

    def __init__(self, harness: ServeHarness, concurrency: int = CONCURRENCY) -> None:
        self.harness, self.concurrency = harness, concurrency
        self.events: list[Event] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.harness.run(self.concurrency, None, self._stop, events=self.events)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


def _wait_steady(traffic: Traffic, since: float, timeout_s: float) -> None:
    """Until ``STEADY_S`` of only 200s have passed after the last error since ``since`` (or timeout)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.5)
        recent = [e for e in list(traffic.events) if e.start >= since]
        bad = [e.start for e in recent if e.status != 200]
        last = max(bad) if bad else since
        if time.monotonic() - last >= STEADY_S and any(e.status == 200 and e.start > last for e in recent):
            return


def _scenario(
    harness: ServeHarness,
    name: str,
    inject: Callable[[], dict[str, Any]],
    log: Callable[[str], None],
    recover_timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Traffic for a moment, the fault (``inject`` returns when it is over), then traffic until steady."""
    log(f"[{name}] ...")
    with Traffic(harness) as traffic:
        time.sleep(2.0)
        fault_start = time.monotonic()
        try:
            detail = inject()
        except Exception as exc:
            detail = {"error": f"{type(exc).__name__}: {exc}"}
        fault_end = time.monotonic()
        _wait_steady(traffic, fault_start, recover_timeout_s)
    stats = fault_stats(traffic.events, fault_start, fault_end)
    stored = harness.check_stored()
    result = {
        "scenario": name,
        "fault_s": fault_end - fault_start,
        "detail": detail,
        "overall": step_summary(traffic.events, traffic.events[-1].end - traffic.events[0].start)
        if traffic.events
        else None,
        **stats,
        "stored": stored,
        "survived": stats["recovered"] and stored["ok"],
    }
    log(
        f"[{name}] fault {result['fault_s']:.1f} s; during it {stats['during']['requests']} requests, "
        f"error rate {stats['during']['error_rate']:.1%} {stats['during']['errors'] or ''}; "
        f"recovery {_s(stats['recovery_s'])}; stored {stored['rows']}/{stored['ok_responses']} "
        f"(lost {stored['lost']}, buffered {stored['buffered']})"
    )
    return result


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


# -- the faults ----------------------------------------------------------------------------------------
def _serve_actor(prefix: str) -> str:
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == "serve"]
    matches = sorted(n for n in names if n.startswith(prefix))
    if not matches:
        raise RuntimeError(f"no Serve actor named {prefix}*; there are {names}")
    return matches[0]


def kill_replica(model: str = "m0") -> dict[str, Any]:
    import ray

    prefix = f"SERVE_REPLICA::genart#{model}#"
    name = _serve_actor(prefix)
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    # The fault lasts until Serve has a replacement replica up: that is the window requests must survive.
    replacement, after_s = _wait_replaced(prefix, model, name)
    return {"killed": name, "replaced_by": replacement, "replaced_after_s": after_s}


def _wait_replaced(prefix: str, deployment: str, killed: str) -> tuple[str | None, float | None]:
    """Wait (90 s at most) until a replica other than ``killed`` runs and the deployment is healthy."""
    from ray import serve

    start = time.monotonic()
    while time.monotonic() - start < 90:
        time.sleep(0.5)
        try:
            replacement = _serve_actor(prefix)
            healthy = serve.status().applications["genart"].deployments[deployment].status == "HEALTHY"
        except Exception:
            continue
        if replacement != killed and healthy:
            return replacement, time.monotonic() - start
    return None, None


def kill_controller() -> dict[str, Any]:
    import ray

    ray.kill(ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve"), no_restart=False)
    start = time.monotonic()
    while time.monotonic() - start < 60:  # Ray restarts it; wait until it answers again
        time.sleep(0.5)
        try:
            from ray import serve

            if serve.status().applications["genart"].status == "RUNNING":
                return {"killed": "SERVE_CONTROLLER_ACTOR", "controller_back_s": time.monotonic() - start}
        except Exception:
            continue
    return {"killed": "SERVE_CONTROLLER_ACTOR", "controller_back_s": None}


def _pg(action: str) -> subprocess.CompletedProcess:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    return subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _pg_ready(timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if subprocess.run(["pg_isready", "-h", "127.0.0.1"], capture_output=True).returncode == 0:
            return True
        time.sleep(0.5)
    return False


def stop_postgres(outage_s: float, harness: ServeHarness) -> dict[str, Any]:
    detail: dict[str, Any] = {"outage_s": outage_s}
    try:
        stopped = _pg("stop")
        detail["stop_rc"] = stopped.returncode
        if stopped.returncode != 0:
            detail["stop_stderr"] = stopped.stderr.strip()[-300:]
        time.sleep(outage_s / 2)
        detail["buffered_mid_outage"] = harness.buffered()
        health = harness.health() or {}
        detail["health_mid_outage"] = health.get("status")
        time.sleep(outage_s / 2)
    finally:
        started = _pg("start")
        detail["start_rc"] = started.returncode
        detail["ready_again"] = _pg_ready()
    return detail


def kill_ingress_during_outage(outage_s: float, harness: ServeHarness) -> dict[str, Any]:
    """PostgreSQL stopped, the ingress replica SIGKILLed while it buffers, PostgreSQL started again.

    The predictions the killed ingress had answered are only in its spool; the replacement replays them.
    """
    import ray

    prefix = "SERVE_REPLICA::genart#EnsembleIngress#"
    detail: dict[str, Any] = {"outage_s": outage_s}
    try:
        _pg("stop")
        time.sleep(outage_s / 3)
        detail["buffered_before_kill"] = harness.buffered()
        name = _serve_actor(prefix)
        pid = ray.get(ray.get_actor(name, namespace="serve").__ray_call__.remote(lambda _: os.getpid()))
        os.kill(pid, signal.SIGKILL)
        start = time.monotonic()
        detail["killed_pid"] = pid
        _, detail["replaced_after_s"] = _wait_replaced(prefix, "EnsembleIngress", name)
        detail["buffered_after_replacement"] = harness.buffered()
        time.sleep(max(0.0, outage_s * 2 / 3 - (time.monotonic() - start)))
    finally:
        started = _pg("start")
        detail["start_rc"] = started.returncode
        detail["ready_again"] = _pg_ready()
    return detail


def fill_shm(hold_s: float, leave_free_mib: int, headroom_gib: float) -> dict[str, Any]:
    usage = shutil.disk_usage("/dev/shm")
    with open("/proc/meminfo") as f:
        meminfo = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    size, capped = shm_fill_bytes(
        usage.free, meminfo["MemAvailable"], leave_free_mib * 2**20, int(headroom_gib * 2**30)
    )
    detail: dict[str, Any] = {
        "shm_total_mib": usage.total // 2**20,
        "shm_free_before_mib": usage.free // 2**20,
        "mem_available_mib": meminfo["MemAvailable"] // 2**20,
        "filled_mib": size // 2**20,
        "capped_by_memory": capped,
    }
    path = Path("/dev/shm") / f"genart-chaos-fill-{os.getpid()}"
    try:
        chunk = b"\0" * (64 * 2**20)
        with open(path, "wb") as f:
            written = 0
            while written < size:
                written += f.write(chunk[: min(len(chunk), size - written)])
        detail["shm_free_during_mib"] = shutil.disk_usage("/dev/shm").free // 2**20
        time.sleep(hold_s)
    finally:
        path.unlink(missing_ok=True)
    return detail


def trainer_worker_killed(timeout_s: int) -> dict[str, Any]:
    """Run the test that kills a Ray Train worker after a checkpoint and checks the run resumes from it."""
    node = "tests/train/test_trainer.py::test_a_killed_worker_resumes_from_the_last_checkpoint"
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        rc, tail = proc.returncode, (proc.stdout + proc.stderr).strip().splitlines()[-1:]
    except subprocess.TimeoutExpired:
        rc, tail = None, [f"timed out after {timeout_s} s"]
    return {
        "scenario": "training worker killed mid-epoch",
        "test": node,
        "passed": rc == 0,
        "returncode": rc,
        "summary": tail[0] if tail else "",
        "seconds": time.monotonic() - start,
        "survived": rc == 0,
    }


# -- report --------------------------------------------------------------------------------------------
def markdown(results: dict[str, Any]) -> str:
    rows = []
    for r in results["scenarios"]:
        if "stored" not in r:
            rows.append(
                f"| {r['scenario']} | - | - | - | - | {'yes' if r['survived'] else '**no**'} "
                f"| {r['summary']} ({r['seconds']:.0f} s) |"
            )
            continue
        d, s = r["during"], r["stored"]
        rows.append(
            f"| {r['scenario']} | {r['fault_s']:.1f} | {d['requests']} | {d['error_rate']:.1%} "
            f"{d['errors'] or ''} | {_s(r['recovery_s'])} | {'yes' if r['survived'] else '**no**'} | "
            f"rows {s['rows']} / 200s {s['ok_responses']}, lost {s['lost']}; "
            f"{_detail(r['detail'])} |"
        )
    m = results["machine"]
    return "\n".join(
        [
            "## Chaos: faults under traffic",
            "",
            f"{results['date']}, {m['cpus']} CPUs, {m.get('memory_gib', '?')} GiB. Background traffic: "
            f"{results['concurrency']} clients posting 160 px PNGs to two untrained models on a local Serve "
            f"app with a PostgreSQL store. {'Short run: ' if results['short'] else ''}"
            f"PostgreSQL outage {results['pg_outage_s']:.0f} s.",
            "",
            "Recovery: from the fault's start to the first 200 after the last error. Lost: 200 responses "
            "with no row in PostgreSQL once the store's buffer drained (goal 0).",
            "",
            "| fault | fault s | requests during | error rate (by status; 0 = no response) | recovery "
            "| survived | nothing lost? / notes |",
            "|---|---:|---:|---|---:|---|---|",
            *rows,
            "",
            f"Faults survived: **{results['survived']} / {len(results['scenarios'])}**"
            + (f" (skipped: {', '.join(results['skipped'])})" if results.get("skipped") else "")
            + "; "
            f"predictions lost: **{results['lost']}**.",
            "",
        ]
    )


def _detail(detail: dict[str, Any]) -> str:
    keep = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in detail.items() if k != "stop_stderr"}
    return ", ".join(f"{k}={v}" for k, v in keep.items())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short", action="store_true", help="shorter faults (under ~4 minutes in all)")
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["replica", "controller", "postgres", "ingress", "train", "shm"],
    )
    parser.add_argument(
        "--with-train", action="store_true", help="with --short, still run the training-worker scenario"
    )
    parser.add_argument("--shm-leave-mib", type=int, default=100, help="free space to leave in /dev/shm")
    parser.add_argument(
        "--shm-headroom-gib",
        type=float,
        default=8.0,
        help="memory to keep available while /dev/shm is filled",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    outage_s = 20.0 if args.short else 30.0
    hold_s = 10.0 if args.short else 30.0
    log = lambda line: print(line, flush=True)  # noqa: E731
    scenarios: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp, serve_harness(Path(tmp), "genart_chaos") as harness:
            harness.run(2, 3.0)  # warm-up
            plan: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
                ("replica", "model replica killed (ray.kill)", kill_replica),
                ("controller", "Serve controller killed", kill_controller),
                (
                    "postgres",
                    f"PostgreSQL stopped {outage_s:.0f} s",
                    lambda: stop_postgres(outage_s, harness),
                ),
                (
                    "ingress",
                    f"ingress SIGKILLed during a {outage_s:.0f} s PostgreSQL outage",
                    lambda: kill_ingress_during_outage(outage_s, harness),
                ),
                (
                    "shm",
                    "/dev/shm nearly full",
                    lambda: fill_shm(hold_s, args.shm_leave_mib, args.shm_headroom_gib),
                ),
            ]
            for key, name, inject in plan:
                if key not in args.skip:
                    scenarios.append(_scenario(harness, name, inject, log))
    finally:
        if not _pg_ready(5):
            log("PostgreSQL is not answering: starting it")
            _pg("start")
            _pg_ready()
    skipped = list(args.skip)
    if args.short and not args.with_train and "train" not in skipped:
        skipped.append("train")  # the pytest node alone takes 1.5-5 minutes on 2 cores
    if "train" in skipped:
        log("[training worker killed mid-epoch] skipped (--short without --with-train)")
    else:
        log("[training worker killed mid-epoch] running the pytest node ...")
        scenarios.append(trainer_worker_killed(240 if args.short else 600))
        log(f"[training worker killed mid-epoch] {scenarios[-1]['summary']}")
    results = {
        "benchmark": "chaos",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "short": args.short,
        "concurrency": CONCURRENCY,
        "pg_outage_s": outage_s,
        "scenarios": scenarios,
        "skipped": skipped,
        "survived": sum(bool(s["survived"]) for s in scenarios),
        "lost": max((s["stored"]["lost"] for s in scenarios if "stored" in s), default=0),
    }
    md = markdown(results)
    write_results(args.out, "chaos", results, md)
    print(md)
    return results


if __name__ == "__main__":
    outcome = main()
    # CI runs the short mode: a fault not survived or a lost prediction fails it.
    raise SystemExit(0 if outcome["lost"] == 0 and all(r["survived"] for r in outcome["scenarios"]) else 1)
