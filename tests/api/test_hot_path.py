"""What keeps the API's hop small, and that it changes no answer: resolved routes kept, the
tracer provider looked up at most once a second; and uvicorn's 100-continue still answered."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider

from sidecar.api import ApiServer
from sidecar.api import app as app_module
from sidecar.api.app import ApiApp
from sidecar.api.problems import Problem
from sidecar.api.routes import MAX_CACHED_PATH, ROUTE_CACHE, Router, resolve

RUN = "/v1/runs/user-1/run-1"


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
