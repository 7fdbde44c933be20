"""Metrics and spans of checkpoint operations, and the tracing set-up helper.

Metric objects are created once per ``CollectorRegistry`` and shared by every Checkpointer on
that registry (a registry holds one metric of a name): the first Checkpointer on a registry
fixes the latency buckets, which always contain its budget as an edge. A Checkpointer built
with another budget on the same registry still works; its budget is simply not an exact edge.

Spans cost almost nothing when nobody records them: attributes are built only when
``span.is_recording()``. Content never goes on a span; user and run ids only when the config
says ``trace_identifiers=True``. This module needs ``opentelemetry-api`` only; the SDK is
imported by :func:`configure_tracing`, which applications and the sidecar process call.
"""

from __future__ import annotations

import bisect
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from sidecar import names

_VERSION = "0.1.0"
EXEMPLAR_INTERVAL_S = 1.0  # at most one exemplar per bucket, operation and outcome this often
SpanAttributes = dict[str, str | int | bool]
"""Attributes of one checkpoint span (built only while the span is recording)."""


@dataclass(slots=True)
class OpenCircuits:
    """How many circuits (one per shard of each Checkpointer) on one registry are open now.

    ``checkpoint_circuit_open`` is 1 while any of them is open: Checkpointers and shards
    sharing a registry must not overwrite each other's state.
    """

    count: int = 0


@dataclass(frozen=True, slots=True)
class Metrics:
    """The library's metric objects on one registry."""

    duration: Histogram
    duration_buckets: tuple[float, ...]  # its upper bounds, +Inf excluded
    budget_exceeded: Counter
    budget_seconds: Gauge
    section_bytes: Histogram
    stored_bytes: Histogram
    runs_started: Counter
    runs_finished: Counter
    sections: Counter
    circuit_open: Gauge
    open_circuits: OpenCircuits


_per_registry: weakref.WeakKeyDictionary[CollectorRegistry, Metrics] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _counter_name(exposed: str) -> str:
    return exposed.removesuffix("_total")


def metrics_for(registry: CollectorRegistry | None, budget_seconds: float) -> Metrics:
    """The metric set of ``registry`` (default: prometheus_client's global one), made once."""
    reg = REGISTRY if registry is None else registry
    with _lock:
        found = _per_registry.get(reg)
        if found is not None:
            return found
        buckets = names.latency_buckets(budget_seconds)
        made = Metrics(
            duration=Histogram(
                names.OPERATION_DURATION,
                "Duration of one checkpoint operation, bounded by the overhead budget.",
                ["operation", "outcome"],
                buckets=buckets,
                registry=reg,
            ),
            duration_buckets=buckets,
            budget_exceeded=Counter(
                _counter_name(names.BUDGET_EXCEEDED),
                "Checkpoint operations that took longer than the overhead budget.",
                ["operation"],
                registry=reg,
            ),
            budget_seconds=Gauge(
                names.BUDGET_SECONDS,
                "The configured overhead budget of one checkpoint operation.",
                registry=reg,
                multiprocess_mode="livemax",  # a dead process's budget leaves with it
            ),
            section_bytes=Histogram(
                names.SECTION_BYTES,
                "Serialized size of the sections saved or loaded.",
                ["operation"],
                buckets=names.SECTION_BYTES_BUCKETS,
                registry=reg,
            ),
            stored_bytes=Histogram(
                names.SECTION_STORED_BYTES,
                "Size in Redis of the sections saved or loaded (after compression and "
                "encryption); beside checkpoint_section_bytes it gives the compression ratio.",
                ["operation"],
                buckets=names.SECTION_BYTES_BUCKETS,
                registry=reg,
            ),
            runs_started=Counter(
                _counter_name(names.RUNS_STARTED),
                "Resumable runs started, fresh or resumed from checkpoints.",
                ["mode"],
                registry=reg,
            ),
            runs_finished=Counter(
                _counter_name(names.RUNS_FINISHED),
                "Resumable runs finished: completed (checkpoints cleaned) or failed (kept).",
                ["status"],
                registry=reg,
            ),
            sections=Counter(
                _counter_name(names.SECTIONS),
                "Sections a run obtained: restored from a checkpoint or produced anew.",
                ["source"],
                registry=reg,
            ),
            circuit_open=Gauge(
                names.CIRCUIT_OPEN,
                "1 while the circuit breaker short-circuits checkpoint calls.",
                registry=reg,
                multiprocess_mode="livemax",
            ),
            open_circuits=OpenCircuits(),
        )
        _per_registry[reg] = made
        return made


class Instrumentation:
    """Spans and metrics of one Checkpointer, with label children bound once for speed."""

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None,
        tracer_provider: TracerProvider | None,
        budget_seconds: float,
        server: tuple[str, int],
        trace_identifiers: bool,
    ) -> None:
        self.metrics = metrics_for(registry, budget_seconds)
        self.metrics.budget_seconds.set(budget_seconds)
        self.metrics.circuit_open.set(1 if self.metrics.open_circuits.count else 0)
        self.tracer: Tracer = trace.get_tracer(
            names.TRACER_NAME, _VERSION, tracer_provider=tracer_provider
        )
        self.budget_seconds = budget_seconds
        self.server_address, self.server_port = server
        self.trace_identifiers = trace_identifiers
        self._durations: dict[tuple[str, str], Any] = {}
        self._exceeded: dict[str, Any] = {}
        self._bytes: dict[str, Any] = {}
        self._stored: dict[str, Any] = {}
        self._described: dict[tuple[str, str], SpanAttributes] = {}
        self._buckets = self.metrics.duration_buckets
        self._exemplar_at: dict[tuple[str, str, int], float] = {}

    def circuit_changed(self, is_open: bool) -> None:
        """One breaker on this registry opened or closed; the gauge says whether any is open."""
        with _lock:
            circuits = self.metrics.open_circuits
            circuits.count = max(0, circuits.count + (1 if is_open else -1))
            self.metrics.circuit_open.set(1 if circuits.count else 0)

    def start_span(
        self,
        operation: str,
        start_ns: int | None = None,
        attributes: SpanAttributes | None = None,
    ) -> Span:
        return self.tracer.start_span(
            names.SPAN_PREFIX + operation,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=start_ns,
        )

    def describe(
        self,
        operation: str,
        db_operation: str,
        section: str | None,
        ids: tuple[str, str],
    ) -> SpanAttributes:
        """A call's request attributes, for :meth:`start_span` (a copy of a dict built once
        per operation: a tracer may keep what it is given). :meth:`finish` adds the outcome."""
        base = self._described.get((operation, db_operation))
        if base is None:
            base = self._described[(operation, db_operation)] = {
                "db.system.name": "redis",
                "db.operation.name": db_operation,
                "server.address": self.server_address,
                "server.port": self.server_port,
                "checkpoint.operation": operation,
            }
        attrs = base.copy()
        if section is not None:
            attrs["checkpoint.section"] = section
        if self.trace_identifiers:
            attrs["checkpoint.user_id"] = ids[0]
            attrs["checkpoint.run_id"] = ids[1]
        return attrs

    def _exemplar_due(self, operation: str, outcome: str, duration: float) -> bool:
        """Whether this observation carries its trace id as an exemplar: the first in its
        bucket (of its operation and outcome) for ``EXEMPLAR_INTERVAL_S``.

        prometheus_client keeps only the latest exemplar of each bucket and Prometheus reads
        it at most once a scrape, so exemplars attached more often were overwritten unseen;
        attaching one cost ~25 us of a call whose caches were cold (format, validation, the
        Exemplar). Every bucket that is observed still gets one: a slow outlier alone in its
        bucket always does, which is what the heatmap's exemplars are for."""
        key = (operation, outcome, bisect.bisect_left(self._buckets, duration))
        now = time.monotonic()
        if now - self._exemplar_at.get(key, -EXEMPLAR_INTERVAL_S) < EXEMPLAR_INTERVAL_S:
            return False
        self._exemplar_at[key] = now
        return True

    def finish(
        self,
        span: Span,
        operation: str,
        outcome: str,
        duration: float,
        nbytes: int | None,
        error: BaseException | None,
        attrs: SpanAttributes | None = None,
        stored: int | None = None,
    ) -> bool:
        """Record the outcome on the span (with ``attrs``, any attributes it lacks yet) and in
        the metrics, and end the span; True when over budget. ``nbytes``: the sections'
        serialized size; ``stored``: their size in Redis (both observed only when the call
        succeeded)."""
        exceeded = duration > self.budget_seconds
        exemplar = None
        if span.is_recording():
            result = {} if attrs is None else attrs
            result["checkpoint.outcome"] = outcome
            result["checkpoint.budget_exceeded"] = exceeded
            if nbytes is not None:
                result["checkpoint.bytes"] = nbytes
            span.set_attributes(result)
            if error is not None:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            ctx = span.get_span_context()
            if ctx.trace_flags.sampled and self._exemplar_due(operation, outcome, duration):
                exemplar = {"trace_id": format(ctx.trace_id, "032x")}
        span.end()
        key = (operation, outcome)
        child = self._durations.get(key)
        if child is None:
            child = self._durations[key] = self.metrics.duration.labels(operation, outcome)
        child.observe(duration, exemplar)
        if exceeded:
            counter = self._exceeded.get(operation)
            if counter is None:
                counter = self._exceeded[operation] = self.metrics.budget_exceeded.labels(operation)
            counter.inc()
        if nbytes is not None and outcome == names.OK:
            sized = self._bytes.get(operation)
            if sized is None:
                sized = self._bytes[operation] = self.metrics.section_bytes.labels(operation)
            sized.observe(nbytes)
            if stored:
                held = self._stored.get(operation)
                if held is None:
                    held = self._stored[operation] = self.metrics.stored_bytes.labels(operation)
                held.observe(stored)
        return exceeded


def configure_tracing(
    service_name: str,
    *,
    exporter: str | None = None,
    max_queue_size: int = 2048,
    set_global: bool = True,
) -> Any:
    """Set up the OpenTelemetry SDK from the standard ``OTEL_*`` environment.

    ``exporter`` is ``"otlp"`` (OTLP/HTTP, configured by ``OTEL_EXPORTER_OTLP_*``), ``"console"``
    or ``"none"``; by default it follows ``OTEL_TRACES_EXPORTER`` (default ``otlp``). Returns the
    SDK ``TracerProvider`` (installed globally unless ``set_global=False``); pass it to
    ``Checkpointer(tracer_provider=...)`` or rely on the global one. Needs
    ``checkpoint-sidecar[server]`` (the SDK); the library itself needs only the API.
    """
    import os

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    choice = (exporter or os.environ.get("OTEL_TRACES_EXPORTER", "otlp")).split(",")[0].strip()
    provider = SdkTracerProvider(resource=Resource.create({"service.name": service_name}))
    span_exporter: SpanExporter | None
    if choice == "console":
        span_exporter = ConsoleSpanExporter()
    elif choice == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()
    elif choice == "none":
        span_exporter = None
    else:
        raise ValueError(f"unknown traces exporter {choice!r}: use otlp, console or none")
    if span_exporter is not None:
        provider.add_span_processor(
            BatchSpanProcessor(span_exporter, max_queue_size=max_queue_size)
        )
    if set_global:
        trace.set_tracer_provider(provider)
    return provider
