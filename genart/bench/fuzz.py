"""Schema fuzzing: schemathesis generates requests from the live API's OpenAPI schema; none may get a 5xx.

Every operation gets ``examples`` positive (schema-conforming) and ``examples`` negative (schema-violating)
cases, derandomised so that a run is reproducible. It only fuzzes an API on this machine (a loopback URL):
the requests are hostile on purpose.

    python -m genart.bench.fuzz --api http://127.0.0.1:8000 --api-key "$GENART_API_KEY" --examples 200
"""

import argparse
import contextlib
import ipaddress
import json
import socket
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["FuzzReport", "fuzz", "main", "require_loopback"]


@dataclass
class FuzzReport:
    api: str
    examples: int
    schemathesis: str
    statuses: dict[str, Counter] = field(default_factory=dict)  # "POST /predict" -> {status: count}
    failures: list[str] = field(default_factory=list)  # one line per 5xx or transport error

    @property
    def calls(self) -> int:
        return sum(sum(c.values()) for c in self.statuses.values())

    def summary(self) -> dict[str, Any]:
        """What ``make reliability`` reads (``fuzz.json``)."""
        from datetime import UTC, datetime

        from genart.bench.common import machine

        return {
            "benchmark": "fuzz",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "api": self.api,
            "schemathesis": self.schemathesis,
            "examples": self.examples,
            "inputs": self.calls,
            "failures": len(self.failures),
            "statuses": {op: {str(k): v for k, v in c.items()} for op, c in sorted(self.statuses.items())},
        }

    def markdown(self) -> str:
        lines = [
            "# Schema fuzzing",
            "",
            f"schemathesis {self.schemathesis} against {self.api}: {self.examples} positive and "
            f"{self.examples} negative examples per operation, {self.calls} requests, "
            f"**{len(self.failures)} failures** "
            "(a 5xx or no answer).",
            "",
            "| operation | requests | statuses |",
            "|---|---:|---|",
        ]
        for operation, counts in sorted(self.statuses.items()):
            shown = ", ".join(f"{status}: {n}" for status, n in sorted(counts.items()))
            lines.append(f"| `{operation}` | {sum(counts.values())} | {shown} |")
        if self.failures:
            lines += ["", "## Failures", ""] + [f"- {line}" for line in self.failures[:50]]
        return "\n".join(lines) + "\n"


def require_loopback(api: str) -> None:
    """Refuse (ValueError) an API whose host is not a loopback address or resolves to anything else."""
    host = urlsplit(api).hostname
    if not host:
        raise ValueError(f"{api!r} has no host; give e.g. http://127.0.0.1:8000")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host!r}: {exc}") from None
    outside = sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if outside or not addresses:
        raise ValueError(
            f"{api} is not on this machine ({host} -> {outside}); the fuzzer only runs on loopback"
        )


def _settings(examples: int) -> dict[str, Any]:
    from hypothesis import HealthCheck, Phase, Verbosity

    return {
        "max_examples": examples,
        "deadline": None,
        "derandomize": True,
        "database": None,
        "phases": [Phase.explicit, Phase.generate],  # no shrinking: we record, not minimise
        "suppress_health_check": list(HealthCheck),
        "verbosity": Verbosity.quiet,
    }


def _operation_run(strategy: Any, api: str, headers: dict[str, str], timeout_s: float, label: str) -> Any:
    """A hypothesis test that sends each generated case and records its status; 5xx or no answer fail."""
    from hypothesis import given

    @given(case=strategy)
    def run(case: Any) -> None:
        try:
            response = case.call(base_url=api, headers=headers, timeout=timeout_s)
        except Exception as exc:  # no answer at all is as bad as a 5xx
            run.statuses["error"] += 1
            run.failures.append(f"{label}: {type(exc).__name__}: {exc}")
            return
        run.statuses[response.status_code] += 1
        if response.status_code >= 500:
            curl = case.as_curl_command(headers={"X-API-Key": "***"})
            run.failures.append(f"{label}: {response.status_code} {response.text[:200]!r} for {curl[:400]}")

    run.statuses, run.failures = Counter(), []
    return run


def fuzz(
    api: str, api_key: str | None, examples: int = 25, seed: int = 0, timeout_s: float = 30
) -> FuzzReport:
    """Run every operation of ``api``'s schema through ``examples`` positive and negative cases."""
    import hypothesis
    import schemathesis
    from hypothesis import settings
    from schemathesis import GenerationMode

    require_loopback(api)
    headers = {"X-API-Key": api_key} if api_key else {}
    schema = schemathesis.openapi.from_url(f"{api}/openapi.json", headers=headers, timeout=timeout_s)
    report = FuzzReport(api=api, examples=examples, schemathesis=schemathesis.__version__)
    for result in schema.get_all_operations():
        operation = result.ok()
        name = f"{operation.method.upper()} {operation.path}"
        counts = report.statuses.setdefault(name, Counter())
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            label = f"{name} ({mode.value})"
            run = _operation_run(operation.as_strategy(generation_mode=mode), api, headers, timeout_s, label)
            # Unsatisfiable: nothing to violate (negative cases of a GET with no parameters)
            with contextlib.suppress(hypothesis.errors.Unsatisfiable):
                hypothesis.seed(seed)(settings(**_settings(examples))(run))()
            counts.update(run.statuses)
            report.failures.extend(run.failures)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--api", required=True, help="the API's base URL; loopback only")
    parser.add_argument("--api-key", default=None, help="sent as X-API-Key")
    parser.add_argument("--examples", type=int, default=200, help="positive and negative cases per operation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("reports/fuzz.md"))
    args = parser.parse_args(argv)
    try:
        report = fuzz(args.api.rstrip("/"), args.api_key, args.examples, args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report.markdown())
    args.out.with_suffix(".json").write_text(json.dumps(report.summary(), indent=2))
    print(report.markdown())
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
