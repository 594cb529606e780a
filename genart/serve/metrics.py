"""The serving metrics, exported through ``ray.serve.metrics`` (Prometheus names get a ``ray_`` prefix).

Prometheus scrapes them from each node's Ray metrics endpoint (``ray start --metrics-export-port=8080``,
then ``http://<node>:8080/metrics``). The request path counts into a :class:`Tally` (plain dicts); the
ingress hands it to Ray's metrics once a second (:meth:`ServeMetrics.flush`), so that a request pays for a
dictionary update instead of a Ray metric record per count.
"""

from __future__ import annotations

import logging
import os
from functools import cached_property
from typing import Any

__all__ = ["LATENCY_BOUNDARIES_MS", "ServeMetrics", "Tally", "save_coverage"]

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]


class Tally:
    """Counts and observations made on the request path, held until :meth:`drain` hands them over.

    Counts with the same metric and tags add up, so a flush records each series once; observations are
    kept one by one (a histogram needs each value)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._observed: list[tuple[str, float, tuple[tuple[str, str], ...]]] = []

    def count(self, metric: str, n: float = 1.0, **tags: str) -> None:
        key = (metric, tuple(tags.items()))
        self._counts[key] = self._counts.get(key, 0.0) + n

    def observe(self, metric: str, value: float, **tags: str) -> None:
        self._observed.append((metric, value, tuple(tags.items())))

    def drain(self) -> tuple[dict[tuple[str, tuple[tuple[str, str], ...]], float], list[Any]]:
        """What was tallied since the last drain; the tally starts again empty."""
        counts, observed = self._counts, self._observed
        self._counts, self._observed = {}, []
        return counts, observed


class ServeMetrics:
    """Created inside a replica (Ray must be running); each metric is made on first use."""

    def __init__(self) -> None:
        self.tally = Tally()

    def flush(self) -> int:
        """Record what the tally holds into Ray's metrics; returns the number of records made."""
        counts, observed = self.tally.drain()
        for (metric, tags), n in counts.items():
            getattr(self, metric).inc(n, tags=dict(tags))
        for metric, value, tags in observed:
            getattr(self, metric).observe(value, tags=dict(tags))
        return len(counts) + len(observed)

    @cached_property
    def predictions(self):
        from ray.serve.metrics import Counter

        return Counter(
            "genart_predictions_total",
            description="predictions served, by label and by model ('ensemble' for the combined verdict)",
            tag_keys=("label", "model"),
        )

    @cached_property
    def stage_latency(self):
        from ray.serve.metrics import Histogram

        return Histogram(
            "genart_stage_latency_ms",
            description="latency per stage: decode, each model, ensemble, total",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("stage",),
        )

    @cached_property
    def errors(self):
        from ray.serve.metrics import Counter

        return Counter(
            "genart_errors_total", description="error responses by code and route", tag_keys=("code", "route")
        )

    @cached_property
    def store_failures(self):
        from ray.serve.metrics import Counter

        return Counter(
            "genart_store_write_failures_total", description="failed writes to the prediction store"
        )

    @cached_property
    def store_dropped(self):
        from ray.serve.metrics import Counter

        return Counter(
            "genart_store_dropped_total",
            description="predictions dropped because the store buffer was full (each is logged and spilled)",
        )

    @cached_property
    def store_buffer(self):
        from ray.serve.metrics import Gauge

        return Gauge("genart_store_buffer_depth", description="predictions waiting to be written")

    @cached_property
    def feedback(self):
        from ray.serve.metrics import Counter

        return Counter(
            "genart_feedback_total",
            description="feedback received, by whether we were right",
            tag_keys=("correct",),
        )

    @cached_property
    def online_accuracy(self):
        from ray.serve.metrics import Gauge

        return Gauge("genart_online_accuracy", description="accuracy over every prediction with feedback")


def save_coverage() -> None:
    """Under the test suite's coverage (a ``.pth`` hook starts it in every Python process when
    ``COVERAGE_PROCESS_START`` or ``COVERAGE_PROCESS_CONFIG`` is set), write this replica's data now. Serve
    stops replicas with ``ray.kill``, which skips the ``atexit`` hook that would have written it."""
    if not (os.environ.get("COVERAGE_PROCESS_CONFIG") or os.environ.get("COVERAGE_PROCESS_START")):
        return
    try:
        import coverage

        current = coverage.Coverage.current()
        if current is not None:
            current.save()
    except Exception:  # measuring must never fail a health check
        logging.getLogger("genart.serve").debug("coverage data not saved", exc_info=True)
