"""Fixtures of the HTTP API tests: the API served in-process on a free port, over the session's
private server, with its own registry and an in-memory span exporter; an httpx client to it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from sidecar import CheckpointConfig
from sidecar.api import ApiServer

PREFIX = "ckpt-api"


@pytest.fixture
def api_config(redis_url: str) -> CheckpointConfig:
    return CheckpointConfig(redis_url=redis_url, key_prefix=PREFIX, budget_ms=1000)


@pytest.fixture
async def api_server(
    api_config: CheckpointConfig,
    redis_client: aioredis.Redis,  # flushes the keyspace first
    registry: CollectorRegistry,
    tracer_provider: TracerProvider,
) -> AsyncIterator[ApiServer]:
    async with ApiServer(
        api_config, port=0, registry=registry, tracer_provider=tracer_provider
    ) as server:
        yield server


@pytest.fixture
async def http(api_server: ApiServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_server.url, timeout=10) as client:
        yield client


async def raw(
    client: httpx.AsyncClient, method: str, target: str | bytes, **kwargs: Any
) -> httpx.Response:
    """A request whose target is sent byte for byte (no dot-segment or escape normalization)."""
    if isinstance(target, str):
        target = target.encode("ascii")
    return await client.request(method, "/", extensions={"target": target}, **kwargs)


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status and stable code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith("/" + code)
    assert body["title"] and body["detail"]
    return body


from server.conftest import sidecar_factory  # noqa: E402  (real sidecar processes, killed at the end)

__all__ = ["assert_problem", "raw", "sidecar_factory"]
