"""Spans (in-memory exporter), metric samples (fresh registry), exemplars, events."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from sidecar import (
    CheckpointConfig,
    Checkpointer,
    CheckpointEvent,
    RunContext,
    SerializationError,
)
from sidecar.names import latency_buckets

CTX = RunContext(user_id="alice-secret-id", run_id="run-secret-7")


async def test_span_per_verb_with_attributes(
    cp: Checkpointer, span_exporter: InMemorySpanExporter, redis_url: str
) -> None:
    mgr = cp.manager(CTX)
    await mgr.save_section("summary", {"text": "very private content"})
    await mgr.load_section("summary")
    await mgr.load_all_sections()
    await mgr.get_progress()
    await mgr.has_checkpoints()
    await mgr.get_checkpoint_age()
    await mgr.cleanup()
    spans = {s.name: s for s in span_exporter.get_finished_spans()}
    assert set(spans) == {
        f"checkpoint.{verb}"
        for verb in (
            "save_section", "load_section", "load_all_sections", "get_progress",
            "has_checkpoints", "get_checkpoint_age", "cleanup",
        )
    }  # fmt: skip
    save = spans["checkpoint.save_section"]
    assert save.kind is SpanKind.CLIENT
    attrs = dict(save.attributes or {})
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    assert attrs == {
        "db.system.name": "redis",
        "db.operation.name": "EVALSHA",
        "server.address": "127.0.0.1",
        "server.port": port,
        "checkpoint.operation": "save_section",
        "checkpoint.section": "summary",
        "checkpoint.bytes": len(b'{"text":"very private content"}'),
        "checkpoint.outcome": "ok",
        "checkpoint.budget_exceeded": False,
    }
    assert (
        dict(spans["checkpoint.has_checkpoints"].attributes or {})["db.operation.name"] == "EXISTS"
    )
    for span in spans.values():
        text = repr(dict(span.attributes or {}))
        assert "private content" not in text
        assert "alice-secret-id" not in text
        assert "run-secret-7" not in text


async def test_lease_spans(cp: Checkpointer, span_exporter: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError):
        async with cp.run(CTX, plan=["a"]) as run:
            await run.step("a", lambda: 1)
            raise RuntimeError
    names = [s.name for s in span_exporter.get_finished_spans()]
    assert names == [  # the acquire marks "a" in progress: one round trip for the step
        "checkpoint.lease_acquire",
        "checkpoint.save_section",
        "checkpoint.lease_release",
    ]


async def test_identifiers_on_spans_only_when_asked(
    redis_client: aioredis.Redis,
    registry: CollectorRegistry,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    cfg = CheckpointConfig(trace_identifiers=True, budget_ms=1000)
    async with Checkpointer(
        redis_client, cfg, registry=registry, tracer_provider=tracer_provider
    ) as cp:
        await cp.manager(CTX).has_checkpoints()
    attrs = dict(span_exporter.get_finished_spans()[0].attributes or {})
    assert attrs["checkpoint.user_id"] == "alice-secret-id"
    assert attrs["checkpoint.run_id"] == "run-secret-7"


async def test_failed_span_has_error_status_and_exception(
    registry: CollectorRegistry,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    from sidecar.server.embedded import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    async with Checkpointer.from_url(
        url, config=CheckpointConfig(budget_ms=300), registry=registry,
        tracer_provider=tracer_provider,
    ) as cp:  # fmt: skip
        await cp.manager(CTX).save_section("s", 1)
        with pytest.raises(SerializationError):
            await cp.manager(CTX).save_section("s", object())
    error_span, rejected_span = span_exporter.get_finished_spans()
    assert error_span.status.status_code is StatusCode.ERROR
    assert error_span.attributes is not None
    assert error_span.attributes["checkpoint.outcome"] == "error"
    assert [e.name for e in error_span.events] == ["exception"]
    assert rejected_span.attributes is not None
    assert rejected_span.attributes["checkpoint.outcome"] == "rejected"
    assert registry.get_sample_value(
        "checkpoint_operation_duration_seconds_count",
        {"operation": "save_section", "outcome": "rejected"},
    ) == 1  # fmt: skip


async def test_metrics_samples_and_budget_bucket(
    cp: Checkpointer, registry: CollectorRegistry
) -> None:
    mgr = cp.manager(CTX)
    await mgr.save_section("summary", "x" * 2000)
    await mgr.load_section("summary")
    sample = registry.get_sample_value
    ok = {"operation": "save_section", "outcome": "ok"}
    assert sample("checkpoint_operation_duration_seconds_count", ok) == 1
    assert sample("checkpoint_operation_duration_seconds_bucket", {**ok, "le": "1.0"}) == 1
    assert sample("checkpoint_budget_seconds") == 1.0
    assert sample("checkpoint_section_bytes_count", {"operation": "save_section"}) == 1
    assert sample("checkpoint_section_bytes_sum", {"operation": "save_section"}) == 2002
    assert sample("checkpoint_section_bytes_sum", {"operation": "load_section"}) == 2002
    assert sample("checkpoint_circuit_open") == 0
    exposition = generate_latest(registry).decode()
    assert "alice-secret-id" not in exposition
    assert "run-secret-7" not in exposition
    assert '"summary"' not in exposition


def test_latency_buckets_contain_the_budget() -> None:
    for budget in (0.1, 0.05, 0.2, 0.075, 1.0, 0.0123):
        buckets = latency_buckets(budget)
        assert budget in buckets
        assert buckets[0] == 0.0001
        assert buckets[-1] == 2.5
        assert list(buckets) == sorted(set(buckets))


async def test_exemplars_in_openmetrics(cp: Checkpointer, registry: CollectorRegistry) -> None:
    await cp.manager(CTX).save_section("summary", 1)
    text = generate_openmetrics(registry).decode()
    lines = [
        line for line in text.splitlines()
        if line.startswith("checkpoint_operation_duration_seconds_bucket") and "# {" in line
    ]  # fmt: skip
    assert lines, text
    assert 'trace_id="' in lines[0]
    trace_id = lines[0].split('trace_id="')[1].split('"')[0]
    assert len(trace_id) == 32
    assert int(trace_id, 16) != 0


def _exemplars(registry: CollectorRegistry, outcome: str = "ok") -> dict[str, str]:
    """{le: trace_id} of the save_section duration buckets of ``outcome`` that carry one."""
    found = {}
    for line in generate_openmetrics(registry).decode().splitlines():
        if (
            line.startswith("checkpoint_operation_duration_seconds_bucket")
            and 'operation="save_section"' in line
            and f'outcome="{outcome}"' in line
            and "# {" in line
        ):
            le = line.split('le="')[1].split('"')[0]
            found[le] = line.split('trace_id="')[1].split('"')[0]
    return found


async def test_each_bucket_takes_an_exemplar_at_most_once_a_second(
    monkeypatch: pytest.MonkeyPatch, cp: Checkpointer, registry: CollectorRegistry
) -> None:
    """prometheus_client keeps the latest exemplar of a bucket only: more than one a second per
    bucket was overwritten unseen. A bucket seen for the first time always gets one."""
    from sidecar import telemetry

    now = [5000.0]
    monkeypatch.setattr(telemetry.time, "monotonic", lambda: now[0])
    tele = cp.telemetry

    def observe(seconds: float, outcome: str = "ok") -> str:
        span = tele.start_span("save_section")
        tele.finish(span, "save_section", outcome, seconds, None, None)
        return format(span.get_span_context().trace_id, "032x")

    first = observe(0.00001)
    assert _exemplars(registry) == {"0.0001": first}
    observe(0.00002)  # same bucket, same second: not attached
    assert _exemplars(registry) == {"0.0001": first}
    slow = observe(0.2)  # a bucket of its own: attached at once
    assert _exemplars(registry) == {"0.0001": first, "0.25": slow}
    failed = observe(0.00002, "error")  # another outcome is another series
    assert _exemplars(registry, "error") == {"0.0001": failed}
    now[0] += telemetry.EXEMPLAR_INTERVAL_S
    later = observe(0.00003)  # a second later: the bucket takes the newest trace
    assert _exemplars(registry) == {"0.0001": later, "0.25": slow}


async def test_no_exemplar_without_a_sampled_span(redis_client: aioredis.Redis) -> None:
    registry = CollectorRegistry()
    # no tracer provider configured: the global no-op one records nothing
    async with Checkpointer(
        redis_client, CheckpointConfig(budget_ms=1000), registry=registry
    ) as cp:
        await cp.manager(CTX).save_section("summary", 1)
    assert "trace_id" not in generate_openmetrics(registry).decode()


async def test_registries_are_independent_and_shareable(redis_client: aioredis.Redis) -> None:
    one, two = CollectorRegistry(), CollectorRegistry()
    cfg = CheckpointConfig(budget_ms=1000)
    a = Checkpointer(redis_client, cfg, registry=one)
    b = Checkpointer(redis_client, cfg, registry=two)
    c = Checkpointer(redis_client, CheckpointConfig(budget_ms=250), registry=one)  # shares `one`
    await a.manager(CTX).has_checkpoints()
    await c.manager(CTX).has_checkpoints()
    labels = {"operation": "has_checkpoints", "outcome": "ok"}
    assert one.get_sample_value("checkpoint_operation_duration_seconds_count", labels) == 2
    assert two.get_sample_value("checkpoint_operation_duration_seconds_count", labels) is None
    await b.manager(CTX).has_checkpoints()
    assert two.get_sample_value("checkpoint_operation_duration_seconds_count", labels) == 1
    # the first Checkpointer on a registry fixed its buckets (1 s budget edge kept)
    assert one.get_sample_value(
        "checkpoint_operation_duration_seconds_bucket", {**labels, "le": "1.0"}
    ) == 2  # fmt: skip


async def test_events_sync_async_and_a_raising_listener(
    redis_client: aioredis.Redis, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[CheckpointEvent] = []
    async_seen: list[CheckpointEvent] = []

    async def async_listener(event: CheckpointEvent) -> None:
        await asyncio.sleep(0)
        async_seen.append(event)

    def raising(event: CheckpointEvent) -> None:
        raise RuntimeError("listener bug")

    cfg = CheckpointConfig(budget_ms=1000)
    async with Checkpointer(redis_client, cfg, registry=registry, on_event=seen.append) as cp:
        mgr = cp.manager(CTX)
        await mgr.save_section("summary", 1)
        with pytest.raises(RuntimeError):
            async with cp.run(CTX, plan=["summary", "data"]) as run:
                await run.step("summary", lambda: 0)
                raise RuntimeError
        async with cp.run(CTX, plan=["summary", "data"]) as run:
            await run.step("summary", lambda: 0)
            await run.step("data", lambda: 2)
    assert [(e.kind, e.section) for e in seen] == [
        ("saved", "summary"),
        ("resumed", None),
        ("resumed", None),
        ("saved", "data"),
        ("cleaned", None),
    ]
    assert all(e.user_id == CTX.user_id and e.run_id == CTX.run_id for e in seen)
    assert all(e.duration_s >= 0 for e in seen)

    async with Checkpointer(redis_client, cfg, registry=registry, on_event=async_listener) as cp:
        await cp.manager(CTX).save_section("summary", 1)
    assert [e.kind for e in async_seen] == ["saved"]

    with caplog.at_level(logging.ERROR, logger="sidecar"):
        async with Checkpointer(redis_client, cfg, registry=registry, on_event=raising) as cp:
            assert await cp.manager(CTX).save_section("summary", 1) is True
            assert await cp.manager(CTX).load_section("summary") == 1
    assert "listener raised" in caplog.text


def test_configure_tracing_builds_an_sdk_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.trace import TracerProvider as SdkProvider

    from sidecar.telemetry import configure_tracing

    provider = configure_tracing("agent-under-test", exporter="console", set_global=False)
    assert isinstance(provider, SdkProvider)
    assert provider.resource.attributes["service.name"] == "agent-under-test"
    provider.shutdown()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    quiet = configure_tracing("agent-under-test", set_global=False)
    assert isinstance(quiet, SdkProvider)
    quiet.shutdown()
    with pytest.raises(ValueError, match="unknown traces exporter"):
        configure_tracing("x", exporter="carrier-pigeon", set_global=False)
