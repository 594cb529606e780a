"""The reliability summary: one table from whatever load, chaos, fuzz and benchmark reports exist.

Reads ``reports/load.json``, ``reports/chaos.json``, ``reports/fuzz.md`` (or ``fuzz.json``) and
``reports/bench/*.json`` and writes ``reports/reliability.md``: load held, faults survived, bad inputs tried
and lost predictions (goal 0), each with the date and machine of the run it comes from.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from genart.bench.common import pair_label

__all__ = ["collect", "main", "markdown"]


def _machine(m: dict[str, Any] | None) -> str:
    if not m:
        return "?"
    parts = [f"{m.get('cpus', '?')} CPUs"]
    if m.get("memory_gib"):
        parts.append(f"{m['memory_gib']} GiB")
    parts.append(m.get("gpu") or "no GPU")
    return ", ".join(parts)


def _date(results: dict[str, Any], path: Path) -> str:
    if results.get("date"):
        return str(results["date"])[:10]
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).date().isoformat()


def _load_row(path: Path) -> dict[str, Any]:
    r = json.loads(path.read_text())
    sat = r.get("saturation") or {}
    value = (
        f"{r['held_req_s']:.1f} req/s at concurrency {r['steady_concurrency']} "
        f"({r['steady_error_rate']:.1%} errors); saturates at concurrency {sat.get('concurrency')}"
        f"{'' if sat.get('reached') else ' (not reached)'}"
    )
    if r.get("memory_flags"):
        value += f"; RSS growth flagged: {', '.join(r['memory_flags'])}"
    return {"what": "load held", "value": value, "lost": r.get("lost"), "date": _date(r, path), "machine": r}


def _chaos_row(path: Path) -> dict[str, Any]:
    r = json.loads(path.read_text())
    failed = [s["scenario"] for s in r["scenarios"] if not s["survived"]]
    value = f"{r['survived']} / {len(r['scenarios'])}" + (f" (not: {', '.join(failed)})" if failed else "")
    return {
        "what": "faults survived",
        "value": value,
        "lost": r.get("lost"),
        "date": _date(r, path),
        "machine": r,
    }


def _ingress_kill_row(path: Path) -> dict[str, Any] | None:
    """Its own row for the spool's test: the ingress killed while the database is down (issue 15). Its lost
    count is already in the chaos row's, so it is shown in the value and not added twice."""
    r = json.loads(path.read_text())
    scenario = next((s for s in r["scenarios"] if s["scenario"].startswith("ingress SIGKILLed")), None)
    if scenario is None:
        return None
    stored = scenario["stored"]
    value = f"rows {stored['rows']} / 200s {stored['ok_responses']}, lost {stored['lost']}"
    replayed = scenario["detail"].get("buffered_after_replacement")
    if replayed is not None:
        value += f" ({replayed} replayed from the killed replica's spool)"
    return {"what": scenario["scenario"], "value": value, "lost": None, "date": _date(r, path), "machine": r}


def _fuzz_row(path: Path) -> dict[str, Any]:
    """The fuzz report is another engineer's: take a JSON ``inputs``/``tried`` count, or the first
    "<n> ... inputs" figure in the Markdown, and say what was found rather than guess."""
    if path.suffix == ".json":
        r = json.loads(path.read_text())
        tried = r.get("inputs") or r.get("tried") or r.get("cases")
        value = f"{tried} schema-generated requests"
        if r.get("failures") is not None and "examples" in r:
            value += f" ({r['examples']} positive + {r['examples']} negative per operation)"
            value += f"; 5xx or no answer: {r['failures']}"
        return {
            "what": "bad inputs tried (schemathesis)",
            "value": value,
            "lost": None,
            "date": _date(r, path),
            "machine": r,
        }
    text = path.read_text()
    match = re.search(r"(\d[\d,]*)\s+(?:\w+\s+){0,3}(?:inputs|cases|requests|examples)", text)
    value = f"{match.group(1)} (from {path.name})" if match else f"see {path.name}"
    five = re.search(r"(\d+)\s+5\d\d", text)
    if five:
        value += f"; 5xx: {five.group(1)}"
    return {
        "what": "bad inputs tried",
        "value": value,
        "lost": None,
        "date": _date({}, path),
        "machine": {"machine": None},
    }


def _ratio(r: dict[str, Any]) -> str:
    """A serving ratio as the benchmark judged it: a figure only when its repeats agreed."""
    return f"{r['ratio']:.2f}x" if r.get("result") else "no result (repeats disagree) for"


def _bench_row(path: Path) -> dict[str, Any]:
    r = json.loads(path.read_text())
    name = r.get("benchmark", path.stem)
    if name == "serve" and "pairs" in r:
        value = "; ".join(
            f"{pair_label(p)}: Serve at 16 clients {p['serve']['16']['req_s']['median']:.1f} req/s, "
            f"{_ratio(p['ratio_serve16_over_ceiling'])} the ceiling, "
            f"{_ratio(p['ratio_serve16_over_plain16'])} plain FastAPI, "
            f"layout {p['layout_cpu_ms_per_request']:.1f} CPU ms/request"
            for p in r["pairs"].values()
        )
    elif name == "serve" and "ratio_serve16_over_ceiling" in r:
        top = r["serve"]["16"]
        value = (f"Serve at 16 clients {top['req_s']:.1f} req/s (p99 {top['p99_ms']:.0f} ms): "
                 f"{r['ratio_serve16_over_ceiling']:.2f}x the in-process ceiling (goal 0.8), "
                 f"{r['ratio_serve16_over_plain16']:.2f}x plain FastAPI (goal 2.0)")  # fmt: skip
    elif name == "serve" and "serve" in r:
        top = max(r["serve"].values(), key=lambda s: s.get("req_s", 0))
        value = f"Serve {top['req_s']:.1f} req/s (p99 {top['p99_ms']:.0f} ms)"
    elif name == "data" and "cases" in r:
        value = "Ray Data / DataLoader, steady: " + "; ".join(
            f"{case}: {c['ratio']['text']}" for case, c in r["cases"].items()
        )
    elif name == "train" and "ratio_2_workers_over_plain" in r:
        value = (f"Ray Train / plain loop: 1 worker {r['ratio_1_worker_over_plain']:.2f}x, "
                 f"2 workers {r['ratio_2_workers_over_plain']:.2f}x")  # fmt: skip
    elif name == "budget" and "max_budgeted_peak_mb" in r:
        value = f"hostile headers: largest preprocessing peak {r['max_budgeted_peak_mb']:.0f} MB (goal < 512)"
    else:
        value = f"see {path.name}"
    return {"what": f"benchmark: {name}", "value": value, "lost": None, "date": _date(r, path), "machine": r}


def collect(reports: Path) -> list[dict[str, Any]]:
    """One row per report that exists, in a fixed order."""
    rows = []
    sources = [
        (reports / "load.json", _load_row),
        (reports / "chaos.json", _chaos_row),
        (reports / "chaos.json", _ingress_kill_row),
        (reports / "fuzz.json", _fuzz_row),
        (reports / "fuzz.md", _fuzz_row),
    ]
    seen_fuzz = False
    for path, reader in sources:
        if not path.exists() or (reader is _fuzz_row and seen_fuzz):
            continue
        seen_fuzz |= reader is _fuzz_row
        try:
            row = reader(path)
        except (KeyError, TypeError, ValueError) as exc:
            row = {"what": path.stem, "value": f"unreadable ({type(exc).__name__}: {exc})", "lost": None}
            row |= {"date": "?", "machine": {}}
        if row is None:
            continue
        rows.append({**row, "source": str(path), "machine": _machine(row["machine"].get("machine"))})
    for path in sorted((reports / "bench").glob("*.json")):
        row = _bench_row(path)
        rows.append({**row, "source": str(path), "machine": _machine(row["machine"].get("machine"))})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    counted = [r["lost"] for r in rows if r["lost"] is not None]
    lost = sum(counted) if counted else None
    table = [
        f"| {r['what']} | {r['value']} | {'-' if r['lost'] is None else r['lost']} | {r['date']} | "
        f"{r['machine']} | {Path(r['source']).name} |"
        for r in rows
    ]
    verdict = (
        "no run measured it yet"
        if lost is None
        else ("**0** (goal 0)" if lost == 0 else f"**{lost}** (goal 0)")
    )
    return "\n".join(
        [
            "## Reliability",
            "",
            "| what | result | lost predictions | date | machine | source |",
            "|---|---|---:|---|---|---|",
            *(table or ["| (no reports found) | | | | | |"]),
            "",
            f"Lost predictions across the load and chaos runs: {verdict}.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)
    md = markdown(collect(args.reports))
    args.reports.mkdir(parents=True, exist_ok=True)
    out = args.reports / "reliability.md"
    out.write_text(md)
    print(md)
    return out


if __name__ == "__main__":
    main()
