"""The HTTP API stores through the same verbs: sections sealed at rest, a moved ciphertext
refused (a problem, never the content)."""

from __future__ import annotations

import httpx
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from sidecar import CheckpointConfig
from sidecar.api import ApiServer
from sidecar.keys import run_keys

from .conftest import new_key

MARKER = "MARKER-api-PLAINTEXT"


async def test_api_sections_are_sealed(
    redis_url: str, redis_client: aioredis.Redis, registry: CollectorRegistry
) -> None:
    cfg = CheckpointConfig(
        redis_url=redis_url, key_prefix="ckpt-api", budget_ms=1000, encryption_keys=[new_key("k1")]
    )
    content = {"text": MARKER, "body": "report " * 400}
    async with ApiServer(cfg, port=0, registry=registry) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            r = await http.put("/v1/runs/u1/r1/sections/summary", json=content)
            assert r.status_code == 204, r.text
            r = await http.get("/v1/runs/u1/r1/sections/summary")
            assert r.status_code == 200
            assert r.json() == content
            raw = await redis_client.hget(run_keys("ckpt-api", "u1", "r1").sections, "summary")
            assert raw is not None
            assert MARKER.encode() not in raw
            await redis_client.hset(run_keys("ckpt-api", "u2", "r2").sections, "summary", raw)
            r = await http.get("/v1/runs/u2/r2/sections/summary")
            assert r.status_code == 500
            assert r.json()["code"] == "internal_error"
            assert "corrupt" in r.json()["detail"]
            assert MARKER not in r.text
