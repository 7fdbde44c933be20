"""The overhead budget, enforced: frozen, stopped and restarted servers; the circuit breaker.

The bound checked here is budget + generous slack (the machines are shared): what matters is
that a call on a frozen server returns at all, and soon, instead of hanging.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.asyncio.cluster import RedisCluster

from sidecar import (
    CheckpointConfig,
    Checkpointer,
    CheckpointTimeout,
    CheckpointUnavailable,
    Progress,
    RunContext,
)
from sidecar.server.embedded import EmbeddedServer

CTX = RunContext(user_id="alice", run_id="run-1")
SLACK_S = 0.4
VERBS = (
    ("save_section", False),
    ("load_section", None),
    ("load_all_sections", {}),
    ("get_progress", Progress()),
    ("has_checkpoints", False),
    ("get_checkpoint_age", None),
    ("cleanup", False),
)


async def call_verb(cp: Checkpointer, verb: str) -> object:
    mgr = cp.manager(CTX)
    if verb == "save_section":
        return await mgr.save_section("summary", {"x": 1})
    if verb == "load_section":
        return await mgr.load_section("summary")
    result: object = await getattr(mgr, verb)()
    return result


@pytest.fixture
async def frozen_setup(
    private_server: EmbeddedServer,
) -> AsyncIterator[tuple[EmbeddedServer, CollectorRegistry]]:
    yield private_server, CollectorRegistry()
    private_server.resume()


async def test_frozen_server_every_verb_gives_up_within_budget(
    frozen_setup: tuple[EmbeddedServer, CollectorRegistry],
) -> None:
    server, registry = frozen_setup
    cfg = CheckpointConfig(budget_ms=100, breaker_failures=1000)
    async with Checkpointer.from_url(server.url, config=cfg, registry=registry) as cp:
        assert await cp.manager(CTX).save_section("summary", {"x": 0})  # warm connection
        server.pause()
        for verb, nothing in VERBS:
            started = time.perf_counter()
            result = await call_verb(cp, verb)
            elapsed = time.perf_counter() - started
            assert result == nothing, verb
            assert elapsed < 0.1 + SLACK_S, (verb, elapsed)
            assert registry.get_sample_value(
                "checkpoint_operation_duration_seconds_count",
                {"operation": verb, "outcome": "timeout"},
            ) == 1, verb  # fmt: skip
            assert registry.get_sample_value(
                "checkpoint_budget_exceeded_total", {"operation": verb}
            ) == 1, verb  # fmt: skip
        server.resume()
        # back to normal once the server answers again
        assert await cp.manager(CTX).save_section("summary", {"x": 2})


async def test_frozen_server_in_strict_mode_raises_checkpoint_timeout(
    frozen_setup: tuple[EmbeddedServer, CollectorRegistry],
) -> None:
    server, registry = frozen_setup
    cfg = CheckpointConfig(budget_ms=100, strict=True)
    async with Checkpointer.from_url(server.url, config=cfg, registry=registry) as cp:
        await cp.manager(CTX).has_checkpoints()
        server.pause()
        started = time.perf_counter()
        with pytest.raises(CheckpointTimeout, match="100 ms budget"):
            await cp.manager(CTX).save_section("summary", 1)
        assert time.perf_counter() - started < 0.1 + SLACK_S
        with pytest.raises(CheckpointTimeout):
            async with cp.run(CTX):
                pass


async def test_unreachable_server_strict_raises_unavailable(registry: CollectorRegistry) -> None:
    from sidecar.server.embedded import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    cfg = CheckpointConfig(budget_ms=500, strict=True)
    async with Checkpointer.from_url(url, config=cfg, registry=registry) as cp:
        with pytest.raises(CheckpointUnavailable) as info:
            await cp.manager(CTX).load_all_sections()
    assert "unreachable" in str(info.value)
    assert registry.get_sample_value(
        "checkpoint_operation_duration_seconds_count",
        {"operation": "load_all_sections", "outcome": "error"},
    ) == 1  # fmt: skip


async def test_best_effort_run_still_runs_the_block_when_redis_is_down(
    registry: CollectorRegistry,
) -> None:
    from sidecar.server.embedded import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    cfg = CheckpointConfig(budget_ms=200)
    produced: list[str] = []
    async with Checkpointer.from_url(url, config=cfg, registry=registry) as cp:
        async with cp.run(CTX, plan=["a", "b"]) as run:
            assert run.resumed is False
            assert run.restored == {}
            for name in ("a", "b"):
                await run.step(name, lambda name=name: produced.append(name) or name)
        assert run.result()["report"] == {"a": "a", "b": "b"}
        assert run.result()["success"] is True
    assert produced == ["a", "b"]
    sample = registry.get_sample_value
    # the unconfirmed run tried to take the lease again before each step (once at entry)...
    acquires = sample(
        "checkpoint_operation_duration_seconds_count",
        {"operation": "lease_acquire", "outcome": "error"},
    )
    skipped = sample(
        "checkpoint_operation_duration_seconds_count",
        {"operation": "lease_acquire", "outcome": "skipped"},
    )
    assert (acquires or 0) + (skipped or 0) == 3
    # ...and, never holding it, wrote nothing: no save was even attempted
    assert sample("checkpoint_operation_duration_seconds_count",
                  {"operation": "save_section", "outcome": "error"}) is None  # fmt: skip
    assert sample("checkpoint_sections_total", {"source": "produced"}) == 2


async def test_breaker_opens_skips_without_network_and_closes_after_restart(
    server_binary: str,
) -> None:
    registry = CollectorRegistry()
    server = EmbeddedServer(binary=server_binary).start()
    port = server.port
    cfg = CheckpointConfig(budget_ms=200, breaker_failures=3, breaker_cooldown_s=0.5)
    try:
        async with Checkpointer.from_url(server.url, config=cfg, registry=registry) as cp:
            mgr = cp.manager(CTX)
            assert await mgr.save_section("summary", 1)
            assert registry.get_sample_value("checkpoint_circuit_open") == 0
            server.stop()
            for _ in range(3):
                assert await mgr.has_checkpoints() is False
            assert registry.get_sample_value("checkpoint_circuit_open") == 1
            started = time.perf_counter()
            for _ in range(100):
                assert await mgr.has_checkpoints() is False
            per_call = (time.perf_counter() - started) / 100
            assert per_call < 0.005, per_call  # short-circuited: no network at all
            skipped = registry.get_sample_value(
                "checkpoint_operation_duration_seconds_count",
                {"operation": "has_checkpoints", "outcome": "skipped"},
            )
            assert skipped == 100
            server = EmbeddedServer(binary=server_binary, port=port).start()
            await asyncio.sleep(0.6)  # cooldown over: the next call is a probe
            assert await mgr.save_section("summary", 2) is True
            assert registry.get_sample_value("checkpoint_circuit_open") == 0
            assert await mgr.load_section("summary") == 2
    finally:
        server.stop()


async def test_failed_probe_reopens_the_circuit(registry: CollectorRegistry) -> None:
    from sidecar.server.embedded import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    cfg = CheckpointConfig(budget_ms=200, breaker_failures=2, breaker_cooldown_s=0.2)
    async with Checkpointer.from_url(url, config=cfg, registry=registry) as cp:
        mgr = cp.manager(CTX)
        await mgr.has_checkpoints()
        await mgr.has_checkpoints()
        assert cp.breaker.is_open
        await asyncio.sleep(0.25)
        await mgr.has_checkpoints()  # probe fails
        assert cp.breaker.is_open
        assert await mgr.has_checkpoints() is False  # skipped again, new cooldown
    sample = registry.get_sample_value
    labels = {"operation": "has_checkpoints"}
    assert (
        sample("checkpoint_operation_duration_seconds_count", {**labels, "outcome": "error"}) == 3
    )
    assert (
        sample("checkpoint_operation_duration_seconds_count", {**labels, "outcome": "skipped"}) == 1
    )


async def test_strict_mode_open_circuit_raises_unavailable(registry: CollectorRegistry) -> None:
    from sidecar.server.embedded import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    cfg = CheckpointConfig(budget_ms=200, breaker_failures=1, breaker_cooldown_s=30, strict=True)
    async with Checkpointer.from_url(url, config=cfg, registry=registry) as cp:
        with pytest.raises(CheckpointUnavailable, match="unreachable"):
            await cp.manager(CTX).has_checkpoints()
        with pytest.raises(CheckpointUnavailable, match="circuit open"):
            await cp.manager(CTX).has_checkpoints()


def test_breaker_in_flight_failures_do_not_extend_the_cooldown() -> None:
    from sidecar.budget import CircuitBreaker

    now = [0.0]
    changes: list[bool] = []
    breaker = CircuitBreaker(2, 1.0, changes.append, clock=lambda: now[0])
    assert breaker.allow() is True
    breaker.failure()
    breaker.failure()
    assert breaker.is_open
    assert changes == [True]
    now[0] = 0.9
    breaker.failure()  # a call that was in flight when the circuit opened fails late
    assert breaker.allow() is False
    now[0] = 1.0
    assert breaker.allow() is None  # cooldown counted from the opening: this is the probe
    assert breaker.allow() is False  # only one probe at a time
    breaker.failure(probe=True)  # the probe failed: another full cooldown, owner told again
    assert changes == [True, True]
    now[0] = 1.9
    assert breaker.allow() is False
    now[0] = 2.0
    assert breaker.allow() is None
    breaker.success()
    assert not breaker.is_open
    assert changes == [True, True, False]
    assert breaker.allow() is True


async def test_circuit_gauge_is_shared_by_checkpointers_on_one_registry(
    registry: CollectorRegistry,
) -> None:
    from sidecar.server.embedded import free_port

    down = f"redis://127.0.0.1:{free_port()}/0"
    cfg = CheckpointConfig(budget_ms=200, breaker_failures=1, breaker_cooldown_s=30)
    broken = Checkpointer.from_url(down, config=cfg, registry=registry)
    await broken.manager(CTX).has_checkpoints()
    assert registry.get_sample_value("checkpoint_circuit_open") == 1
    other = Checkpointer.from_url(down, config=cfg, registry=registry)  # must not reset it
    assert registry.get_sample_value("checkpoint_circuit_open") == 1
    await other.manager(CTX).has_checkpoints()
    await broken.aclose()
    assert registry.get_sample_value("checkpoint_circuit_open") == 1  # `other` is still open
    await other.aclose()
    assert registry.get_sample_value("checkpoint_circuit_open") == 0


async def test_circuit_gauge_drops_when_the_cooldown_ends_even_without_calls(
    registry: CollectorRegistry,
) -> None:
    """The gauge means "calls are being skipped": after one cooldown the next call would probe."""
    from sidecar.server.embedded import free_port

    down = f"redis://127.0.0.1:{free_port()}/0"
    cfg = CheckpointConfig(budget_ms=200, breaker_failures=1, breaker_cooldown_s=0.3)
    async with Checkpointer.from_url(down, config=cfg, registry=registry) as cp:
        await cp.manager(CTX).has_checkpoints()
        assert registry.get_sample_value("checkpoint_circuit_open") == 1
        await asyncio.sleep(0.45)
        assert registry.get_sample_value("checkpoint_circuit_open") == 0
        assert cp.breaker.is_open  # still open: the next call is the probe
        await cp.manager(CTX).has_checkpoints()  # the probe fails: skipping again
        assert registry.get_sample_value("checkpoint_circuit_open") == 1


async def test_connect_opens_a_connection_to_every_primary(redis_url: str, backend: str) -> None:
    """connect() pays the connection (and a cluster's discovery) up front, outside any budget."""
    async with Checkpointer.from_url(redis_url) as cp:
        await cp.connect()
        client = cp.store.client
        if backend == "cluster":
            assert isinstance(client, RedisCluster)
            primaries = client.get_primaries()
            assert len(primaries) == 3
            assert all(node._connections for node in primaries)  # one PING each
        else:
            assert isinstance(client, aioredis.Redis)
            assert client.connection_pool._available_connections  # the PING's, back in the pool
        assert await cp.manager(CTX).save_section("summary", 1)
        await cp.manager(CTX).cleanup()


async def test_connect_fails_fast_when_redis_is_unreachable() -> None:
    from sidecar.server.embedded import free_port

    async with Checkpointer.from_url(f"redis://127.0.0.1:{free_port()}/0") as cp:
        with pytest.raises(CheckpointUnavailable, match="connect: Redis unreachable"):
            await cp.connect()
        assert await cp.manager(CTX).save_section("summary", 1) is False  # still usable


async def test_connect_gives_up_after_its_wait_on_a_frozen_server(
    frozen_setup: tuple[EmbeddedServer, CollectorRegistry],
) -> None:
    server, _ = frozen_setup
    async with Checkpointer.from_url(server.url) as cp:
        server.pause()
        started = time.monotonic()
        with pytest.raises(CheckpointTimeout, match=r"within 0\.3 s"):
            await cp.connect(wait_s=0.3)
        assert time.monotonic() - started < 0.3 + SLACK_S


def test_a_client_with_a_socket_timeout_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    """redis-py sends through asyncio.wait_for when a socket timeout is set (its default: 5 s),
    and on Python 3.11 wait_for can drop a cancellation; the Checkpointer says so."""
    with caplog.at_level(logging.WARNING, logger="sidecar"):
        Checkpointer(aioredis.Redis(port=1), registry=CollectorRegistry())
        Checkpointer(aioredis.Redis(port=1, socket_timeout=None), registry=CollectorRegistry())
        Checkpointer.from_url("redis://127.0.0.1:1/0", registry=CollectorRegistry())
    warned = [r for r in caplog.records if "socket timeout" in r.getMessage()]
    assert len(warned) == (1 if sys.version_info < (3, 12) else 0)
