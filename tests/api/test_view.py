"""The resume view splices stored sections into the response (no decode + re-encode): its bytes
must be what encoding the library's decoded view gives, for anything the library stores and
for values something else wrote."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from sidecar import RunContext
from sidecar.api import ApiServer
from sidecar.keys import run_keys

from .conftest import PREFIX, assert_problem

RUN = "/v1/runs/user-v/run-v"
CTX = RunContext(user_id="user-v", run_id="run-v")
CONTENTS: dict[str, Any] = {
    "plain": {"text": "four sections", "n": [1, 2.5, None, True], "é": "ü"},
    "escapes": 'quote " backslash \\ control \x01 tab \t line-sep \u2028 emoji \U0001f600',
    "numbers": [0, -0.0, 1e-7, 1e22, 2**70, -(2**63), 0.1 + 0.2, float("nan"), float("inf")],
    "typed": {"at": dt.datetime(2026, 12, 2, 15, 0, tzinfo=dt.UTC), "id": uuid.UUID(int=7),
              "price": decimal.Decimal("1.10")},
    'name "quoted" ü\u2028': "section names are encoded like the library's",
    "empty": {},
}  # fmt: skip


def without_age(doc: bytes) -> bytes:
    """The view up to its age (which moves between two reads)."""
    head, found, _ = doc.rpartition(b',"age_seconds":')
    assert found
    return head


async def library_view(api_server: ApiServer) -> bytes:
    view = await api_server.checkpointer.manager(CTX).resume_view()
    assert view is not None
    return view.model_dump_json().encode()


async def test_view_bytes_equal_the_library_views_encoding(
    api_server: ApiServer, http: httpx.AsyncClient
) -> None:
    mgr = api_server.checkpointer.manager(CTX)
    for name, content in CONTENTS.items():
        await mgr.save_section(name, content)
    r = await http.get(RUN)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert without_age(r.content) == without_age(await library_view(api_server))
    assert list(r.json()["sections"]) == list(CONTENTS)


@pytest.mark.parametrize(
    "stored",
    [b'{"x": NaN, "y" : [1, 2]}', b'[Infinity, -Infinity]', b' {"spaced" : [ 1 , 2 ] } ',
     b'{"dup":1,"dup":2}', b'"\\u00e9 \\ud83d\\ude00"', b'1E2'],
)  # fmt: skip
async def test_values_written_by_something_else_read_as_the_library_reads_them(
    api_server: ApiServer, http: httpx.AsyncClient, redis_client: aioredis.Redis, stored: bytes
) -> None:
    """Not strict JSON (NaN) is decoded and re-encoded as before; strict JSON in another form
    is spliced as it is, and decodes to the same value."""
    await http.put(f"{RUN}/sections/first", json=1)
    await redis_client.hset(run_keys(PREFIX, "user-v", "run-v").sections, "first", stored)
    r = await http.get(RUN)
    assert r.status_code == 200
    library = await library_view(api_server)
    assert r.json()["sections"] == httpx.Response(200, content=library).json()["sections"]
    if b"NaN" in stored or b"Infinity" in stored:
        assert without_age(r.content) == without_age(library)


async def test_a_stored_value_that_does_not_decode_is_refused_as_before(
    api_server: ApiServer, http: httpx.AsyncClient, redis_client: aioredis.Redis
) -> None:
    await http.put(f"{RUN}/sections/first", json=1)
    await redis_client.hset(run_keys(PREFIX, "user-v", "run-v").sections, "first", b"{broken")
    assert_problem(await http.get(RUN), 400, "invalid_body")
