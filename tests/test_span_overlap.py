"""A call's span is built while Redis works on the command, and dated from the call's start
(:mod:`sidecar.core.calls`): after the write on the direct path, before it on redis-py's own
path (where a hook's child spans need it current)."""

from __future__ import annotations

import socket
import time
from typing import Any

import redis
import redis.asyncio as aioredis
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from prometheus_client import CollectorRegistry

from sidecar import CheckpointConfig, Checkpointer, RunContext, SyncCheckpointer
from sidecar.server.embedded import EmbeddedServer
from sidecar.sync.store import BoundedConnection

CTX = RunContext(user_id="u", run_id="r")
CONTENT = {"text": "what the agent wrote"}


class Timeline(SpanProcessor):
    """Records, in order, each span's start and each command written (with its time)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.ended: list[ReadableSpan] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.events.append(("span " + span.name, time.time_ns()))

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append(span)

    def written(self, command: Any) -> None:
        """A script call written (not the connection's handshake)."""
        chunks = command if isinstance(command, list | tuple) else [command]
        if any(b"EVALSHA" in bytes(chunk) for chunk in chunks):
            self.events.append(("written", time.time_ns()))


TIMELINE = Timeline()


class AsyncWriteRecording(aioredis.Connection):
    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        await super().send_packed_command(command, check_health)
        TIMELINE.written(command)


class WriteRecording(BoundedConnection):
    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        super().send_packed_command(command, check_health)
        TIMELINE.written(command)


def provider() -> TracerProvider:
    TIMELINE.events.clear()
    TIMELINE.ended.clear()
    made = TracerProvider()
    made.add_span_processor(TIMELINE)
    return made


async def save_and_load(client: aioredis.Redis) -> None:
    """A save and a load through a Checkpointer on ``client``, traced by :data:`TIMELINE`."""
    async with Checkpointer(
        client, CheckpointConfig(budget_ms=1000), registry=CollectorRegistry(),
        tracer_provider=provider(),
    ) as cp:  # fmt: skip
        mgr = cp.manager(CTX)
        assert await mgr.save_section("summary", CONTENT) is True
        assert await mgr.load_all_sections() == {"summary": CONTENT}


def check_overlapped(expected_spans: int) -> None:
    """Every span started after its command was written, dated from before the write."""
    kinds = [name for name, _ in TIMELINE.events]
    assert kinds == ["written", "span checkpoint.save_section"] + [
        "written",
        "span checkpoint.load_all_sections",
    ] * (expected_spans - 1)
    writes = [at for name, at in TIMELINE.events if name == "written"]
    for span, written_at in zip(TIMELINE.ended, writes, strict=True):
        assert span.start_time is not None and span.end_time is not None
        assert span.start_time < written_at < span.end_time
        assert dict(span.attributes or {})["checkpoint.outcome"] == "ok"


async def test_async_direct_path_builds_the_span_after_the_write(
    redis_server: EmbeddedServer,
) -> None:
    client = aioredis.Redis.from_url(
        redis_server.url, connection_class=AsyncWriteRecording, socket_timeout=None
    )
    await save_and_load(client)
    check_overlapped(2)
    await client.aclose()


def test_sync_direct_path_builds_the_span_after_the_write(redis_server: EmbeddedServer) -> None:
    client = redis.Redis.from_url(
        redis_server.url, connection_class=WriteRecording, socket_timeout=None
    )
    with SyncCheckpointer(
        client, CheckpointConfig(budget_ms=1000), registry=CollectorRegistry(),
        tracer_provider=provider(),
    ) as cp:  # fmt: skip
        mgr = cp.manager(CTX)
        assert mgr.save_section("summary", CONTENT) is True
        assert mgr.load_all_sections() == {"summary": CONTENT}
    check_overlapped(2)
    client.close()


class CurrentSpanSeen(aioredis.Redis):
    """An overridden ``execute_command`` (a hook): what it sees as the current span."""

    seen: list[str]

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        span = trace.get_current_span()
        self.seen.append(getattr(span, "name", "none") if span.is_recording() else "none")
        return await super().execute_command(*args, **options)


async def test_a_hook_on_redis_pys_path_runs_inside_the_span(
    redis_server: EmbeddedServer,
) -> None:
    client = CurrentSpanSeen.from_url(redis_server.url)
    client.seen = []
    await save_and_load(client)
    assert client.seen == ["checkpoint.save_section", "checkpoint.load_all_sections"]
    assert trace.get_current_span().is_recording() is False  # detached after each call
    await client.aclose()


async def test_a_call_that_fails_before_sending_still_gets_its_span() -> None:
    with socket.socket() as probe:  # a port nobody listens on: refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with Checkpointer.from_url(
        f"redis://127.0.0.1:{port}", config=CheckpointConfig(budget_ms=1000),
        registry=CollectorRegistry(), tracer_provider=provider(),
    ) as cp:  # fmt: skip
        before = time.time_ns()
        assert await cp.manager(CTX).save_section("summary", CONTENT) is False
    (span,) = TIMELINE.ended
    assert span.name == "checkpoint.save_section"
    assert span.start_time is not None and before <= span.start_time
    assert dict(span.attributes or {})["checkpoint.outcome"] == "error"
    assert dict(span.attributes or {})["checkpoint.section"] == "summary"
