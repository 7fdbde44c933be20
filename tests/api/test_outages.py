"""Outages through the API: the Checkpointer is strict, so Redis down is 503 ``unavailable``
with Retry-After, and a frozen Redis is 504 ``budget_exceeded`` ("not confirmed")."""

from __future__ import annotations

import httpx
from prometheus_client import CollectorRegistry

from sidecar import CheckpointConfig
from sidecar.api import ApiServer
from sidecar.server.embedded import EmbeddedServer

from .conftest import assert_problem


async def test_redis_down_is_503_with_retry_after(private_server: EmbeddedServer) -> None:
    config = CheckpointConfig(
        redis_url=private_server.url, budget_ms=500, breaker_failures=2, breaker_cooldown_s=3
    )
    async with ApiServer(config, port=0, registry=CollectorRegistry()) as srv:
        async with httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
            assert (await client.put("/v1/runs/u/r/sections/s", content=b"1")).status_code == 204
            private_server.stop()
            for _ in range(3):  # refused, refused, then the breaker skips (circuit open)
                r = await client.put("/v1/runs/u/r/sections/s", content=b"1")
                assert_problem(r, 503, "unavailable")
                assert r.headers["retry-after"] == "3"
            assert "circuit open" in r.json()["detail"]
            assert_problem(await client.get("/v1/runs/u/r"), 503, "unavailable")


async def test_frozen_redis_is_504_not_confirmed(private_server: EmbeddedServer) -> None:
    config = CheckpointConfig(redis_url=private_server.url, budget_ms=200)
    async with ApiServer(config, port=0, registry=CollectorRegistry()) as srv:
        async with httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
            assert (await client.put("/v1/runs/u/r/sections/s", content=b"1")).status_code == 204
            private_server.pause()
            try:
                r = await client.put("/v1/runs/u/r/sections/s", content=b"2")
            finally:
                private_server.resume()
            body = assert_problem(r, 504, "budget_exceeded")
            assert "not confirmed; saves are idempotent" in body["detail"]
