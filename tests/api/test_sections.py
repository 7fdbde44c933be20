"""The section verbs over HTTP: save, load, resume view, cleanup, and their errors."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis.asyncio as aioredis

from sidecar.api import ApiServer
from sidecar.keys import run_keys

from .conftest import PREFIX, assert_problem, raw

RUN = "/v1/runs/user-1/run-1"


async def test_save_load_view_cleanup(http: httpx.AsyncClient) -> None:
    content = {"text": "four sections", "n": [1, 2.5, None, True], "é": "ü"}
    r = await http.put(f"{RUN}/sections/summary", json=content)
    assert r.status_code == 204 and r.content == b""
    r = await http.put(f"{RUN}/sections/data_analysis", content=b'"second"')
    assert r.status_code == 204
    r = await http.get(f"{RUN}/sections/summary")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == content
    view = (await http.get(RUN)).json()
    assert list(view["sections"]) == ["summary", "data_analysis"]  # completion order
    assert view["sections"]["data_analysis"] == "second"
    assert view["progress"]["completed_sections"] == ["summary", "data_analysis"]
    assert view["progress"]["last_update"] is not None
    assert 0 <= view["age_seconds"] < 60
    assert (await http.delete(RUN)).status_code == 204
    assert_problem(await http.get(RUN), 404, "run_not_found")
    assert_problem(await http.get(f"{RUN}/sections/summary"), 404, "section_not_found")
    assert (await http.delete(RUN)).status_code == 204  # cleanup of nothing is fine


async def test_ids_are_percent_decoded_into_the_library_keys(
    http: httpx.AsyncClient, redis_client: aioredis.Redis
) -> None:
    """'/', '..', braces, ':' and NUL in ids arrive intact and land in that run's keys only."""
    user, run, section = "a/b:{c}", "..", "x\x00y"
    target = "/v1/runs/a%2Fb%3A%7Bc%7D/%2E%2E/sections/x%00y"
    r = await raw(http, "PUT", target, content=b"[1]")
    assert r.status_code == 204, r.text
    keys = run_keys(PREFIX, user, run)
    assert await redis_client.hget(keys.sections, section) == b"[1]"
    assert sorted(await redis_client.keys("*")) == sorted(
        [keys.sections.encode(), keys.meta.encode()]
    )
    r = await raw(http, "GET", "/v1/runs/a%2Fb%3A%7Bc%7D/../sections/x%00y")  # '..' raw too
    assert r.status_code == 200 and r.json() == [1]


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("/v1/runs//run-1/sections/s", "empty user"),
        ("/v1/runs/u/run-1/sections/", "empty section"),
        ("/v1/runs/u/%FF%FE/sections/s", "not UTF-8"),
        ("/v1/runs/u/%ED%A0%80/sections/s", "a surrogate"),
        ("/v1/runs/" + "u" * 257 + "/r/sections/s", "257-char user"),
        ("/v1/runs/u/" + "r" * 10_000 + "/sections/s", "10,000-char run"),
        ("/v1/runs/u/r/sections/" + "s" * 201, "201-char section"),
    ],
)
async def test_bad_identifiers_are_400(http: httpx.AsyncClient, target: str, why: str) -> None:
    for method in ("PUT", "GET"):
        r = await raw(http, method, target, content=b"1" if method == "PUT" else None)
        assert_problem(r, 400, "invalid_identifier")


@pytest.mark.parametrize(
    "body",
    [b"", b"   ", b"{bad", b'{"a": [1, 2', b"NaN", b"[Infinity]", b"\xff\xfe", b"[" * 100_000],
    ids=["empty", "blank", "not-json", "truncated", "nan", "infinity", "not-utf8", "too-deep"],
)
async def test_bad_bodies_are_400_and_write_nothing(
    http: httpx.AsyncClient, redis_client: aioredis.Redis, body: bytes
) -> None:
    assert_problem(await http.put(f"{RUN}/sections/s", content=body), 400, "invalid_body")
    assert await redis_client.keys("*") == []


async def test_body_over_the_limit_is_refused_by_its_content_length(
    http: httpx.AsyncClient, redis_client: aioredis.Redis
) -> None:
    big = b'"' + b"x" * (10 * 1024 * 1024) + b'"'  # 10 MB, limit 1 MiB
    body = assert_problem(
        await http.put(f"{RUN}/sections/s", content=big), 413, "section_too_large"
    )
    assert body["limit"] == 1024 * 1024
    assert await redis_client.keys("*") == []


async def test_streamed_body_over_the_limit_is_refused_while_it_streams(
    http: httpx.AsyncClient, redis_client: aioredis.Redis
) -> None:
    """No Content-Length (chunked): the server stops reading once the limit is passed."""
    sent = 0

    async def chunks():  # type: ignore[no-untyped-def]
        nonlocal sent
        yield b'"'
        for _ in range(160):  # up to 10 MB, unless the server answers first
            sent += 65536
            yield b"x" * 65536
        yield b'"'

    r = await http.put(f"{RUN}/sections/s", content=chunks())
    assert_problem(r, 413, "section_too_large")
    assert sent == 160 * 65536  # httpcore sends it all; the server read only what it needed
    assert await redis_client.keys("*") == []


async def test_streamed_body_stops_being_read_past_the_limit(api_server: ApiServer) -> None:
    """At the ASGI level: the app stops pulling chunks once the limit is passed (it never
    buffers more than the limit plus one chunk), and has not read the Content-Length body."""
    pulled = 0
    chunk = b"x" * 65536

    async def receive() -> dict[str, object]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": pulled < 160}

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "PUT", "path": "/v1/runs/u/r/sections/s",
        "raw_path": b"/v1/runs/u/r/sections/s", "query_string": b"", "headers": [],
    }  # fmt: skip
    await api_server.app(scope, receive, send)
    assert sent[0]["status"] == 413
    assert pulled == 1024 * 1024 // 65536 + 1  # 17 chunks of 160: refused on the one over
    pulled = 0
    scope["headers"] = [(b"content-length", str(10 * 1024 * 1024).encode())]
    await api_server.app(scope, receive, send)
    assert sent[2]["status"] == 413 and pulled == 0  # refused before reading anything


async def test_serialized_size_is_checked_by_the_library_too(
    http: httpx.AsyncClient, redis_client: aioredis.Redis
) -> None:
    """A body under the limit whose content serializes above it (1e9 -> 1000000000.0) is
    refused by the library's own check, with the same problem."""
    body = b"[" + b",".join([b"1e9"] * 200_000) + b"]"
    assert len(body) < 1024 * 1024
    r = await http.put(f"{RUN}/sections/s", content=body)
    assert assert_problem(r, 413, "section_too_large")["limit"] == 1024 * 1024
    assert await redis_client.keys("*") == []


async def test_unknown_routes_and_methods(http: httpx.AsyncClient) -> None:
    assert_problem(await http.get("/v1/nothing"), 404, "not_found")
    assert_problem(await http.get("/metrics"), 404, "not_found")  # metrics live elsewhere
    r = await http.post(f"{RUN}/sections/s", content=b"1")
    body = assert_problem(r, 405, "method_not_allowed")
    assert "PUT" in r.headers["allow"] and "GET" in body["detail"]


async def test_lease_headers_must_come_together(http: httpx.AsyncClient) -> None:
    r = await http.put(f"{RUN}/sections/s", content=b"1", headers={"Checkpoint-Owner": "me"})
    assert_problem(r, 400, "invalid_request")
    r = await http.put(
        f"{RUN}/sections/s", content=b"1",
        headers={"Checkpoint-Owner": "me", "Checkpoint-Fence": "-1"},
    )  # fmt: skip
    assert_problem(r, 400, "invalid_request")
    r = await http.put(f"{RUN}/lease")
    assert_problem(r, 400, "invalid_request")


async def test_a_body_that_never_finishes_is_refused_not_waited_for(api_server: ApiServer) -> None:
    """A client that declares more than it sends gets 400 invalid_body after the body timeout
    (shortened here), never a request held open forever."""

    async def receive() -> dict[str, object]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "PUT", "path": "/v1/runs/u/r/sections/s",
        "raw_path": b"/v1/runs/u/r/sections/s", "query_string": b"",
        "headers": [(b"content-length", b"100")],
    }  # fmt: skip
    api_server.app.api.body_timeout_s = 0.2
    await api_server.app(scope, receive, send)
    assert sent[0]["status"] == 400
    assert b'"invalid_body"' in sent[1]["body"]  # type: ignore[operator]


async def test_managers_are_kept_per_run_and_bounded(
    api_server: ApiServer, http: httpx.AsyncClient
) -> None:
    """Requests of one run share a manager; the cache never grows past its bound, and a bad
    id is refused without being cached."""
    from sidecar.api import handlers

    state = api_server.app.api
    assert (await http.put(f"{RUN}/sections/a", content=b"1")).status_code == 204
    kept = state.manager(handlers.Ids("user-1", "run-1"))
    assert (await http.get(f"{RUN}/sections/a")).status_code == 200
    assert state.manager(handlers.Ids("user-1", "run-1")) is kept
    assert_problem(await http.get("/v1/runs/" + "u" * 300 + "/r"), 400, "invalid_identifier")
    assert all(len(user) <= 256 for user, _ in state._managers)
    for i in range(handlers.MANAGER_CACHE + 10):
        state.manager(handlers.Ids("u", f"r{i}"))
    assert len(state._managers) == handlers.MANAGER_CACHE
