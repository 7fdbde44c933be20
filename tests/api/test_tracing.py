"""The incoming W3C traceparent is the parent of the request's spans: a SERVER span named by
the route template, and the Checkpointer's CLIENT span under it."""

from __future__ import annotations

import time
from typing import Any

import httpx
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from sidecar.api import ApiServer

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


async def test_traceparent_is_the_parent(
    http: httpx.AsyncClient, span_exporter: InMemorySpanExporter
) -> None:
    span_exporter.clear()
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    r = await http.put("/v1/runs/user-7/run-9/sections/summary", content=b"{}", headers=headers)
    assert r.status_code == 204
    spans = {s.name: s for s in span_exporter.get_finished_spans()}
    server = spans["PUT /v1/runs/{user}/{run}/sections/{section}"]
    client = spans["checkpoint.save_section"]
    assert server.kind == SpanKind.SERVER and client.kind == SpanKind.CLIENT
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None and format(server.parent.span_id, "016x") == PARENT_ID
    assert server.parent.is_remote
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert client.context.trace_id == server.context.trace_id
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/v1/runs/{user}/{run}/sections/{section}"
    assert server.attributes["http.response.status_code"] == 204
    assert not any(
        "user-7" in str(v) for s in spans.values() for v in (s.attributes or {}).values()
    )


async def test_without_traceparent_a_new_trace_starts(
    http: httpx.AsyncClient, span_exporter: InMemorySpanExporter
) -> None:
    span_exporter.clear()
    assert (await http.get("/v1/runs/u/r/sections/s")).status_code == 404
    spans = {s.name: s for s in span_exporter.get_finished_spans()}
    server = spans["GET /v1/runs/{user}/{run}/sections/{section}"]
    assert server.parent is None
    assert spans["checkpoint.load_section"].parent.span_id == server.context.span_id  # type: ignore[union-attr]


async def test_the_server_span_ends_after_the_response_is_written(
    api_server: ApiServer, span_exporter: InMemorySpanExporter
) -> None:
    """The span's bookkeeping runs while the client reads the answer, and covers the write."""
    span_exporter.clear()
    route = "GET /v1/runs/{user}/{run}/sections/{section}"
    seen_at_write: list[bool] = []
    written_at: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            names = [s.name for s in span_exporter.get_finished_spans()]
            seen_at_write.append(route in names)
            written_at.append(time.time_ns())

    path = "/v1/runs/u/r/sections/s"
    scope = {
        "type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
        "query_string": b"", "headers": [], "client": ("127.0.0.1", 1),
    }  # fmt: skip
    await api_server.app(scope, receive, send)
    assert seen_at_write == [False]  # not ended when the body went out
    spans = {s.name: s for s in span_exporter.get_finished_spans()}
    server = spans[route]
    assert server.end_time is not None and server.end_time >= written_at[0]
    assert (server.attributes or {})["http.response.status_code"] == 404
