"""The serving benchmark's driver without Ray: measuring a server, the Ray processes it watches, py-spy's
profiles, and how repeats become the pair's verdicts and the report."""

import math
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from genart.bench import serve
from genart.bench.harness import bench_images

GONE_PID = 2**22 + 1  # above Linux's pid_max: never a process


def _run(req_s: float, cpu: dict[str, float], forward_ms: float | None = None) -> dict[int, dict[str, Any]]:
    """One fabricated :func:`serve.measure` pass: 20 requests per step, 1 failed at 64 clients; with
    ``forward_ms``, a Serve pass (mean batch, forward and preprocessing CPU), else a plain one."""
    run = {}
    for c in serve.CONCURRENCY:
        step = {
            "requests": 20,
            "ok": 19 if c == 64 else 20,
            "req_s": req_s,
            "p50_ms": 5.0 * c,
            "p99_ms": 9.0 * c,
        }
        if forward_ms is not None:
            step["mean_batch"] = min(c, 8)
        run[c] = step
    run[serve.CPU_AT]["cpu_ms_per_request"] = cpu
    if forward_ms is not None:
        run[serve.CPU_AT] |= {"forward_cpu_ms_per_request": forward_ms, "preprocess_cpu_ms_per_request": 2.0}
    return run


SERVE_CPU = {
    "ServeReplica:genart:m0": 12.0,
    "ProxyActor": 5.0,
    "raylet": 0.1,
    "load driver (this process)": 6.0,
}


def _pair(
    size: int,
    serve_req_s: list[float],
    layout_extra: list[float] | None = None,
    ingress: str = "proxy",
    idle_runs: list[dict[str, float]] | None = None,
) -> dict[str, Any]:
    """A pair summarised from fabricated repeats: Serve at ``serve_req_s``, plain at 30 req/s, the ceiling
    at 45 img/s; the replicas' CPU grows by ``layout_extra`` ms per repeat."""
    extra = layout_extra or [0.0] * len(serve_req_s)
    serve_runs = [
        _run(
            r,
            {**SERVE_CPU, "ServeReplica:genart:m0": SERVE_CPU["ServeReplica:genart:m0"] + e},
            forward_ms=10.0,
        )
        for r, e in zip(serve_req_s, extra, strict=True)
    ]
    plain_runs = [
        _run(30.0 + d, {"plain app": 20.0, "load driver (this process)": 6.0}) for d in (-0.5, 0, 0.5)
    ]
    images = bench_images(2, 16)
    summary = serve.summarise_pair(
        serve.PAIRS[size], images, [44.0, 45.0, 46.0], serve_runs, plain_runs, 16, 2, idle_runs
    )
    return {**summary, "ingress": ingress}


def test_a_pairs_summary_takes_medians_and_charges_the_layout_all_but_forward_passes_and_driver() -> None:
    p = _pair(96, [39.0, 40.0, 41.0])
    layout = sum(ms for role, ms in SERVE_CPU.items() if not role.startswith("load driver")) - 10.0
    assert p["layout_cpu_ms_per_request"] == pytest.approx(layout)
    assert p["serve_overhead_cpu_ms_per_request"] == pytest.approx(layout - 2.0)  # less the Preprocessor
    assert p["cpu_ms_per_request_serve"] == pytest.approx(SERVE_CPU)
    assert p["serve"][16]["req_s"]["median"] == 40.0 and p["serve"][16]["mean_batch"] == 8
    assert p["serve"][64]["errors"] == 3 and p["serve"][1]["errors"] == 0  # one per repeat at 64 clients
    assert math.isnan(p["plain_fastapi"][16]["mean_batch"])  # the plain app does not batch
    assert p["ratio_serve16_over_ceiling"]["ratio"] == pytest.approx(40.0 / 45.0)
    assert p["ratio_serve16_over_ceiling"]["met"] is (serve.GOALS["ceiling"] <= 40.0 / 45.0)
    assert p["ratio_serve16_over_plain16"]["ratio"] == pytest.approx(40.0 / 30.0)
    assert p["ratio_serve16_over_plain16"]["met"] is (serve.GOALS["plain"] <= 40.0 / 30.0)
    assert p["upload"] == "160 px PNG" and p["ceiling_batch"] == 16 and p["ceiling_torch_threads"] == 2


def test_noisy_repeats_are_reported_as_no_result() -> None:
    p = _pair(224, [20.0, 40.0, 60.0], layout_extra=[0.0, 10.0, 20.0])
    assert not p["ratio_serve16_over_ceiling"]["result"] and not p["ratio_serve16_over_plain16"]["result"]
    assert not p["layout_cpu_ms_repeats"]["agree"]


def test_the_idle_cost_is_shared_out_over_the_requests_served() -> None:
    idle_runs = [{"ServeController": ms, "raylet": 10.0} for ms in (60.0, 40.0, 50.0)]
    p = _pair(96, [39.0, 40.0, 41.0], idle_runs=idle_runs)
    assert p["idle_cpu_ms_per_s"] == {"ServeController": 50.0, "raylet": 10.0}  # medians per process
    assert p["background_cpu_ms_per_request"] == pytest.approx(60.0 / 40.0)  # over Serve's median req/s
    md = serve.markdown(_results([p], []))
    added = p["layout_cpu_ms_per_request"] - 1.5
    shared_out = "| of the layout, the processes' idle cost shared out (idle ms per second / Serve req/s) |"
    assert f"{shared_out} 1.5 |" in md
    assert f"| of the layout, what each request adds (the rest) | {added:.1f} |" in md
    idle_table = md.split("### The Serve app at idle")[1]
    assert "| ServeController | 50.0 |" in idle_table and "| **all processes** | **60.0** |" in idle_table
    without = serve.markdown(_results([_pair(96, [39.0, 40.0, 41.0])], []))
    assert "### The Serve app at idle" not in without and "what each request adds" not in without


def test_idle_cpu_reads_each_process_cpu_per_second() -> None:
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    worker = threading.Thread(target=spin)
    worker.start()
    try:
        idle = serve.idle_cpu({"me": [os.getpid()], "gone": [GONE_PID]}, seconds=0.3)
    finally:
        stop.set()
        worker.join()
    assert set(idle) == {"me", "gone"} and idle["gone"] == 0.0
    assert idle["me"] > 300  # one thread spinning: most of a core's 1000 ms a second


def _results(pairs: list[dict[str, Any]], profile: list[str]) -> dict[str, Any]:
    return {"date": "2030-01-02", "machine": {"cpus": 2}, "repeats": 3, "seconds": 90.0, "profile": profile,
            "pairs": {f"{p['model_input']}-{p['ingress']}": p for p in pairs}}  # fmt: skip


def test_the_report_has_a_table_per_pair_the_cpu_table_and_a_verdict_per_layout() -> None:
    calm, noisy = (
        _pair(96, [39.0, 40.0, 41.0]),
        _pair(224, [20.0, 40.0, 60.0], layout_extra=[0.0, 10.0, 20.0]),
    )
    md = serve.markdown(_results([noisy, calm], ["- **96px-m0**: forward (model.py:9) 70%"]))
    assert md.index("### 96 px: the demo's pair") < md.index("### 224 px: the real recipe's pair")
    assert "; ingress proxy" in md
    assert "| plain FastAPI, no batching | 16 | 30.0 (29.5-30.5, spread 3%) | 80 | 144 | - |" in md
    assert "| Ray Serve ensemble over HTTP | 64 | 40.0 (39.0-41.0, spread 5%) (3 errors) |" in md
    assert "40.0 (20.0-60.0, spread 100%) **(repeats disagree)**" in md
    assert (
        "| process (Ray Serve) | 96 px, proxy | 224 px, proxy |" in md and "| ProxyActor | 5.0 | 5.0 |" in md
    )
    assert "| raylet |" not in md  # under 0.3 ms per request everywhere
    calm_verdict = "met" if calm["layout_cpu_ms_per_request"] <= serve.GOALS["layout_cpu_ms"] else "not met"
    assert f"- 96 px, proxy: the layout costs **{calm['layout_cpu_ms_per_request']:.1f} ms**" in md
    assert f"goal <= 12 ms: {calm_verdict})" in md
    assert "- 224 px, proxy: the layout costs" in md and "the repeats disagree, spread" in md
    assert "not a result" in md.split("- 224 px, proxy")[1]
    assert "haproxy / proxy" not in md  # one layout only: nothing to compare
    assert serve.PROFILE_FOOTER in md and "- **96px-m0**: forward (model.py:9) 70%" in md
    assert serve.PROFILE_HEADER[0] not in serve.markdown(_results([calm], []))


def test_the_report_compares_the_two_ingress_layouts_of_a_size() -> None:
    proxy = _pair(96, [39.0, 40.0, 41.0])
    haproxy = _pair(96, [59.0, 60.0, 61.0], layout_extra=[-5.0, -5.0, -5.0], ingress="haproxy")
    md = serve.markdown(_results([haproxy, proxy], []))
    assert md.index("ingress proxy") < md.index("ingress haproxy")  # proxy first, whatever the order given
    assert "| process (Ray Serve) | 96 px, proxy | 96 px, haproxy |" in md
    ratio = haproxy["layout_cpu_ms_per_request"] / proxy["layout_cpu_ms_per_request"]
    assert f"- 96 px: layout CPU per request, haproxy / proxy: {ratio:.2f}" in md


def test_measure_drives_every_concurrency_and_charges_cpu_per_request_at_16_clients(server: str) -> None:
    pids = {"server": [os.getpid()], "gone": [GONE_PID]}
    results = serve.measure(f"{server}/ok", bench_images(2, 8), base=16, pids=pids)
    assert list(results) == list(serve.CONCURRENCY)
    for c, step in results.items():
        assert step["requests"] == step["ok"] == serve.requests_at(c, 16)
        assert ("cpu_ms_per_request" in step) is (c == serve.CPU_AT) and "mean_batch" not in step
    cpu = results[serve.CPU_AT]["cpu_ms_per_request"]
    assert set(cpu) == {"server", "gone", "load driver (this process)"} and cpu["gone"] == 0.0
    assert cpu["server"] > 0  # this process served and drove the requests


def test_serve_processes_names_ray_children_by_role_and_leaves_idle_workers_out() -> None:
    titles = ["ray::ServeReplica:genart:m0.handle_request", "ray::ProxyActor.receive_asgi_messages",
              "ray::IDLE", "plain-child"]  # fmt: skip
    children = [subprocess.Popen([title, "30"], executable="/bin/sleep") for title in titles]
    try:
        roles = serve.serve_processes()
    finally:
        for child in children:
            child.kill()
            child.wait()
    replica, proxy, idle, plain = (child.pid for child in children)
    assert roles["ServeReplica:genart:m0"] == [replica] and roles["ProxyActor"] == [proxy]
    assert not {idle, plain} & {pid for group in roles.values() for pid in group}


FAKE_PY_SPY = """#!/bin/sh
while [ $# -gt 0 ]; do [ "$1" = --output ] && out=$2; shift; done
trap 'echo "main (a.py:1);forward (/x/timm/model.py:9) 3" > "$out"; exit 0' INT
while :; do sleep 0.05; done
"""


def test_profiles_sample_the_replicas_and_proxy_and_are_written_when_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = tmp_path / "bin" / "py-spy"
    spy.parent.mkdir()
    spy.write_text(FAKE_PY_SPY)
    spy.chmod(0o755)
    monkeypatch.setenv("PATH", f"{spy.parent}{os.pathsep}{os.environ['PATH']}")
    pids = {"ServeReplica:genart:m0": [os.getpid()], "ProxyActor": [os.getpid()], "raylet": [os.getpid()]}
    spies = serve._start_profiles(pids, tmp_path / "profile", "96px")
    serve._stop_profiles(spies)
    assert sorted(name for name, _, _ in spies) == ["96px-ProxyActor", "96px-m0"]  # not the raylet
    for name, _, raw in spies:
        assert raw == tmp_path / "profile" / f"profile-{name}.txt"
        assert serve.hottest_functions(raw) == [("forward (model.py:9)", 1.0)]


def test_main_benchmarks_each_size_asked_and_writes_the_report_with_the_profiles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def bench_pair(pair, repeats, base, root, profile_dir, ingress):  # the Ray part, from fabricated runs
        calls.append((pair, repeats, base, profile_dir, ingress))
        profile_dir.mkdir(parents=True, exist_ok=True)
        (profile_dir / f"profile-{pair.size}px-m0.txt").write_text(
            "main (a.py:1);forward (/x/model.py:9) 4\n"
        )
        return _pair(pair.size, [39.0, 40.0, 41.0], ingress=ingress)

    monkeypatch.setattr(serve, "bench_pair", bench_pair)
    results = serve.main(
        ["--sizes", "96", "--repeats", "2", "--requests", "24", "--out", str(tmp_path), "--profile"]
    )
    assert calls == [(serve.PAIRS[96], 2, 24, tmp_path / "profile", i) for i in ("proxy", "haproxy")]
    assert list(results["pairs"]) == ["96-proxy", "96-haproxy"] and results["profile"] == [
        "- **96px-m0**: forward (model.py:9) 100%"
    ]
    md = (tmp_path / "serve.md").read_text()
    assert "- **96px-m0**: forward (model.py:9) 100%" in md and "### 96 px" in md and "### 224 px" not in md
    assert (tmp_path / "serve.json").exists()


def test_help_states_the_goals(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        serve.main(["--help"])
    assert exit_.value.code == 0 and "Goals (issue 18)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        serve.main(["--sizes", "128"])  # only the pairs it knows
    with pytest.raises(SystemExit):
        serve.main(["--ingress", "nginx"])  # only the layouts genart.serve.app knows
