"""The demo's scoreboard: what the live display shows and the summary reports.

The counts the library itself keeps (sections restored / produced, budget breaches, outcomes)
are read back from the Prometheus registry the demo shares with the sidecar's ``/metrics``, so
the summary shows the same figures an operator would scrape. Exact per-operation latencies come
from the spans: :class:`SpanLatencies` is an OpenTelemetry span processor that keeps the
duration of every ``checkpoint.*`` span.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from prometheus_client import CollectorRegistry

from sidecar import names


class SpanLatencies(SpanProcessor):
    """Keeps the duration in seconds of each ``checkpoint.<operation>`` span, by operation."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if span.start_time is None or span.end_time is None:
            return
        if not span.name.startswith(names.SPAN_PREFIX):
            return
        operation = span.name[len(names.SPAN_PREFIX) :]
        self.samples.setdefault(operation, []).append((span.end_time - span.start_time) / 1e9)

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def quantile(values: list[float], q: float) -> float:
    """The q-quantile by the nearest-rank method (0.0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Board:
    """Live state of the demo, updated by the runs and read by the display."""

    total_runs: int
    abandoned_planned: int
    registry: CollectorRegistry
    latencies: SpanLatencies
    budget_ms: float
    started: float = field(default_factory=time.monotonic)
    active: int = 0
    completed: int = 0
    failed: int = 0
    abandoned: int = 0
    abandoned_with_checkpoints: int = 0
    attempts: int = 0
    resumed_runs: int = 0
    crashes: int = 0
    llm_timeouts: int = 0
    lease_waits: int = 0
    llm_seconds_spent: float = 0.0
    llm_seconds_saved: float = 0.0
    redis_paused: bool = False
    node: dict[str, Any] | None = None  # --node: the Node agents' totals
    pauses: int = 0
    breaker_openings: int = 0
    phase: str = "starting"
    expiries: int = 0
    lease_expiries: int = 0
    thinking: deque[str] = field(default_factory=lambda: deque(maxlen=10))
    example_result: dict[str, Any] | None = None
    example_label: str = ""

    @property
    def done(self) -> int:
        return self.completed + self.failed + self.abandoned

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def think(self, label: str, message: str) -> str:
        line = f"[{label}] {message}"
        self.thinking.append(line)
        return line

    # --- figures read back from the registry ----------------------------------------------

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.registry.get_sample_value(name, labels or {})
        return float(value or 0.0)

    def sections(self, source: str) -> int:
        return int(self.metric(names.SECTIONS, {"source": source}))

    def budget_breaches(self, operation: str | None = None) -> int:
        ops = (operation,) if operation else names.ALL_OPERATIONS
        return int(sum(self.metric(names.BUDGET_EXCEEDED, {"operation": op}) for op in ops))

    def outcome_count(self, outcome: str, operation: str | None = None) -> int:
        ops = (operation,) if operation else names.ALL_OPERATIONS
        return int(
            sum(
                self.metric(
                    names.OPERATION_DURATION + "_count", {"operation": op, "outcome": outcome}
                )
                for op in ops
            )
        )

    def circuit_open(self) -> bool:
        return self.metric(names.CIRCUIT_OPEN) >= 1

    def latency_rows(self) -> list[dict[str, Any]]:
        """Per operation: calls, p50/p99/max in ms, share within budget, non-ok outcomes."""
        rows = []
        for op in names.ALL_OPERATIONS:
            samples = self.latencies.samples.get(op, [])
            if not samples:
                continue
            rows.append(
                {
                    "operation": op,
                    "calls": len(samples),
                    "p50_ms": quantile(samples, 0.50) * 1000,
                    "p99_ms": quantile(samples, 0.99) * 1000,
                    "max_ms": max(samples) * 1000,
                    "over_budget": self.budget_breaches(op),
                    "timeouts": self.outcome_count(names.TIMEOUT, op),
                    "skipped": self.outcome_count(names.SKIPPED, op),
                    "errors": self.outcome_count(names.ERROR, op),
                }
            )
        return rows

    def summary(self) -> dict[str, Any]:
        """The machine-readable summary (``--json``)."""
        return {
            "runs": self.total_runs,
            "completed": self.completed,
            "failed": self.failed,
            "abandoned": self.abandoned,
            "abandoned_with_checkpoints": self.abandoned_with_checkpoints,
            "attempts": self.attempts,
            "resumed_runs": self.resumed_runs,
            "crashes_injected": self.crashes,
            "llm_timeouts_injected": self.llm_timeouts,
            "sections_restored": self.sections("restored"),
            "sections_produced": self.sections("produced"),
            "llm_seconds_spent": round(self.llm_seconds_spent, 3),
            "llm_seconds_saved": round(self.llm_seconds_saved, 3),
            "budget_ms": self.budget_ms,
            "budget_breaches": self.budget_breaches(),
            "timeouts": self.outcome_count(names.TIMEOUT),
            "skipped_by_breaker": self.outcome_count(names.SKIPPED),
            "breaker_openings": self.breaker_openings,
            "degraded_attempts": sum(
                self.outcome_count(o, "lease_acquire")
                for o in (names.TIMEOUT, names.SKIPPED, names.ERROR)
            ),
            "redis_pauses": self.pauses,
            "ttl_expiries_seen": self.expiries,
            "lease_expiries_seen": self.lease_expiries,
            "latency": self.latency_rows(),
            "elapsed_s": round(self.elapsed, 2),
            **({"node": self.node} if self.node is not None else {}),
        }
