"""What keeps the API's hop small, and that it changes no answer: a response written in one
piece, resolved routes kept, the tracer provider looked up at most once a second."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider

from sidecar.api import ApiServer
from sidecar.api import app as app_module
from sidecar.api.app import ApiApp
from sidecar.api.problems import Problem
from sidecar.api.protocol import CoalescingHttpToolsProtocol, CoalescingTransport
from sidecar.api.routes import MAX_CACHED_PATH, ROUTE_CACHE, Router, resolve
from sidecar.api.server import http_protocol

RUN = "/v1/runs/user-1/run-1"


class Recording(asyncio.Transport):
    """A transport that keeps what is written to it (the wrapper's unit tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.events: list[str] = []

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.events.append("close")

    def abort(self) -> None:
        self.events.append("abort")

    def write_eof(self) -> None:
        self.events.append("eof")

    def get_write_buffer_size(self) -> int:
        return 7

    def is_closing(self) -> bool:
        return False


async def test_writes_of_one_response_leave_as_one() -> None:
    inner = Recording()
    t = CoalescingTransport(inner, asyncio.get_running_loop())
    t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
    t.write(b"")  # nothing to send: no write of its own
    t.write(bytearray(b"body"))
    assert inner.writes == [] and t.get_write_buffer_size() == 7 + 42
    t.flush()  # what the protocol does when the response completes
    assert inner.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody"]
    await asyncio.sleep(0)  # the end-of-turn flush finds nothing left
    assert len(inner.writes) == 1
    assert t.is_closing() is False  # everything else is the real transport's


async def test_a_lone_write_leaves_at_the_end_of_the_loop_turn() -> None:
    """A 100 Continue or a streamed chunk is never held past the turn it was written in."""
    inner = Recording()
    t = CoalescingTransport(inner, asyncio.get_running_loop())
    t.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert inner.writes == []
    await asyncio.sleep(0)
    assert inner.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    t.write(b"a")
    t.write(b"b")
    await asyncio.sleep(0)
    assert inner.writes[1:] == [b"ab"]


async def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    inner = Recording()
    t = CoalescingTransport(inner, asyncio.get_running_loop())
    t.write(b"last words")
    t.close()
    assert inner.writes == [b"last words"] and inner.events == ["close"]
    t.write(b"x")
    t.write_eof()
    assert inner.writes[-1] == b"x" and inner.events[-1] == "eof"
    t.write(b"never sent")
    t.abort()
    await asyncio.sleep(0)
    assert inner.writes[-1] == b"x" and inner.events[-1] == "abort"


def test_the_api_server_uses_the_coalescing_protocol() -> None:
    assert http_protocol() is CoalescingHttpToolsProtocol


class Counting:
    """Forwards to the real transport, counting its writes."""

    def __init__(self, transport: asyncio.Transport, writes: list[int]) -> None:
        self._transport, self._writes = transport, writes

    def write(self, data: bytes) -> None:
        self._writes.append(len(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def test_a_response_leaves_the_server_in_one_write(
    monkeypatch: pytest.MonkeyPatch, api_server: ApiServer, http: httpx.AsyncClient
) -> None:
    """Over a real connection, counted on the socket's transport: the head and the 8 KB body
    of a resume view are one write (uvicorn alone makes two: two segments, the client woken
    twice), and the answer is whole."""
    for name in ("a", "b", "c", "d"):
        body = b'{"text": "' + b"x" * 2000 + b'"}'
        assert (await http.put(f"{RUN}/sections/{name}", content=body)).status_code == 204
    writes: list[int] = []
    wrap = CoalescingTransport.__init__

    def counted(self: CoalescingTransport, transport: Any, loop: Any) -> None:
        wrap(self, Counting(transport, writes), loop)  # type: ignore[arg-type]

    monkeypatch.setattr(CoalescingTransport, "__init__", counted)
    async with httpx.AsyncClient(base_url=api_server.url) as fresh:  # a new connection
        r = await fresh.get(RUN)
        assert r.status_code == 200 and list(r.json()["sections"]) == ["a", "b", "c", "d"]
        assert len(writes) == 1 and writes[0] > 8000
        r = await fresh.put(f"{RUN}/sections/e", content=b"1")
        assert r.status_code == 204 and len(writes) == 2  # a 204: one write too


async def test_expect_100_continue_still_goes_out_before_the_body(
    api_server: ApiServer, http: httpx.AsyncClient
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", api_server.port)
    try:
        writer.write(
            f"PUT {RUN}/sections/s HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n"
            "expect: 100-continue\r\n\r\n".encode()
        )
        async with asyncio.timeout(5):
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 ")
        writer.write(b"42")
        async with asyncio.timeout(5):
            final = await reader.readuntil(b"\r\n\r\n")
        assert final.startswith(b"HTTP/1.1 204 ")
    finally:
        writer.close()
    assert (await http.get(f"{RUN}/sections/s")).json() == 42


def test_router_answers_as_resolve_does_and_keeps_only_what_resolved() -> None:
    router = Router()
    path = b"/v1/runs/u%20x/r/sections/s"
    first = router.resolve("PUT", path)
    assert first == resolve("PUT", path) and first[1] == {"user": "u x", "run": "r", "section": "s"}
    assert router.resolve("PUT", path) is first  # kept
    for method, bad in (("GET", b"/v1/nothing"), ("POST", path), ("GET", b"/v1/runs/%FF/r")):
        for _ in range(2):  # refused every time, never kept
            with pytest.raises(Problem):
                router.resolve(method, bad)
    assert len(router._resolved) == 1
    long = b"/v1/runs/" + b"u" * MAX_CACHED_PATH + b"/r"
    assert router.resolve("GET", long)[1]["user"] == "u" * MAX_CACHED_PATH
    assert len(router._resolved) == 1  # a long path is resolved, not kept
    for i in range(ROUTE_CACHE + 5):
        router.resolve("GET", f"/v1/runs/u/r{i}".encode())
    assert len(router._resolved) == ROUTE_CACHE
    assert ("PUT", path) not in router._resolved  # the oldest went first


def test_a_tracer_provider_set_after_start_is_noticed_within_a_second(
    monkeypatch: pytest.MonkeyPatch, api_server: ApiServer
) -> None:
    app = ApiApp(api_server.checkpointer)  # no provider given: the global one decides
    now = [1000.0]
    monkeypatch.setattr(app_module.time, "monotonic", lambda: now[0])
    assert app._tracing() is False
    provider = TracerProvider()
    monkeypatch.setattr(app_module.trace, "get_tracer_provider", lambda: provider)
    now[0] += app_module.RECHECK_S / 2
    assert app._tracing() is False  # not looked up again yet
    now[0] += app_module.RECHECK_S
    assert app._tracing() is True
    monkeypatch.undo()
    assert app._tracing() is True  # a global provider, once set, stays
