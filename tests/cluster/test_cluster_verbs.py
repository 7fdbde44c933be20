"""Cluster specifics the parametrised core suite cannot see: which node each command reaches,
the ways to build a cluster Checkpointer, scripts unknown to a node, hostile ids across slots.

The core suite (tests/test_*.py) already runs every verb, run, lease and script against the
session cluster; these tests look at the nodes themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from cluster_support import LocalCluster, WholeClusterClient, command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from leftovers import only_done_keys_left
from prometheus_client import CollectorRegistry
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from sidecar import CheckpointConfig, Checkpointer, CheckpointUnavailable, RunContext

CTX = RunContext(user_id="alice", run_id="run-1")
PLAN = ["summary", "data_analysis", "recommendations", "action_items"]
SENT = {"EVALSHA", "EVAL", "HGET", "HGETALL", "EXISTS", "UNLINK"}


@contextlib.asynccontextmanager
async def monitored(ports: list[int]) -> AsyncIterator[dict[int, list[str]]]:
    """MONITOR each node; collect what clients send (not what scripts run inside)."""
    seen: dict[int, list[str]] = {port: [] for port in ports}
    clients = [aioredis.Redis(port=port) for port in ports]
    async with contextlib.AsyncExitStack() as stack:
        tasks = []
        for port, client in zip(ports, clients, strict=True):
            monitor = await stack.enter_async_context(client.monitor())

            async def collect(monitor: object = monitor, port: int = port) -> None:
                while True:
                    info = await monitor.next_command()  # type: ignore[attr-defined]
                    if info.get("client_type") != "lua":
                        seen[port].append(str(info["command"]))

            tasks.append(asyncio.create_task(collect()))
        await asyncio.sleep(0.05)
        try:
            yield seen
            await asyncio.sleep(0.1)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    for client in clients:
        await client.aclose()


def verbs(cp: Checkpointer) -> dict[str, Callable[[], Awaitable[object]]]:
    mgr = cp.manager(CTX)
    return {
        "save_section": lambda: mgr.save_section("summary", {"x": 1}),
        "load_section": lambda: mgr.load_section("summary"),
        "load_all_sections": mgr.load_all_sections,
        "get_progress": mgr.get_progress,
        "has_checkpoints": mgr.has_checkpoints,
        "get_checkpoint_age": mgr.get_checkpoint_age,
        "cleanup": mgr.cleanup,
    }


@pytest.mark.parametrize("refresh", [False, True])
async def test_each_verb_is_one_command_on_the_node_owning_the_run(
    redis_cluster: LocalCluster, cluster_client: WholeClusterClient, refresh: bool
) -> None:
    cfg = CheckpointConfig(budget_ms=5000, refresh_ttl_on_read=refresh)
    async with Checkpointer.from_url(
        redis_cluster.url, config=cfg, registry=CollectorRegistry()
    ) as cp:
        calls = verbs(cp)
        for call in calls.values():  # warm-up: topology, connections, scripts loaded
            await call()
        await calls["save_section"]()
        owner = redis_cluster.owner_port(cp.manager(CTX).keys.meta)
        primaries = redis_cluster.primary_ports()
        assert owner in primaries and len(primaries) == 3
        for verb, call in calls.items():
            async with monitored(primaries) as seen:
                await call()
            assert len(seen[owner]) == 1, (verb, seen)
            assert seen[owner][0].split()[0].strip('"').upper() in SENT, (verb, seen)
            others = {port: lines for port, lines in seen.items() if port != owner}
            assert all(not lines for lines in others.values()), (verb, others)


async def test_a_run_keeps_its_three_keys_on_one_node(
    redis_cluster: LocalCluster, cluster_client: WholeClusterClient
) -> None:
    async with Checkpointer(cluster_client, CheckpointConfig(budget_ms=2000)) as cp:
        async with cp.run(CTX, plan=PLAN) as run:
            await run.step("summary", lambda: "s")
            keys = cp.manager(CTX).keys.all
            assert len({key_slot(k.encode()) for k in keys}) == 1
            owner = redis_cluster.owner_port(keys[0])
            for port in redis_cluster.primary_ports():
                found = command(port, "EXISTS", *keys) if port == owner else None
                if port == owner:
                    assert found == 3  # sections, meta, lease: all here
                else:
                    assert command(port, "DBSIZE") == 0


async def test_runs_spread_over_every_primary_and_all_round_trip(
    redis_cluster: LocalCluster, cluster_client: WholeClusterClient
) -> None:
    ctxs = [RunContext(user_id=f"user-{i}", run_id=f"run-{i}") for i in range(60)]
    async with Checkpointer(cluster_client, CheckpointConfig(budget_ms=2000)) as cp:
        assert all(await asyncio.gather(*(cp.manager(c).save_section("s", c.run_id) for c in ctxs)))
        per_primary = [command(port, "DBSIZE") for port in redis_cluster.primary_ports()]
        assert all(isinstance(n, int) and n > 0 for n in per_primary), per_primary
        assert sum(per_primary) == 2 * len(ctxs)  # type: ignore[arg-type]
        for c in ctxs:
            assert await cp.manager(c).load_all_sections() == {"s": c.run_id}
        assert all(await asyncio.gather(*(cp.manager(c).cleanup() for c in ctxs)))
    assert await cluster_client.dbsize() == 0


async def full_cycle(cp: Checkpointer) -> None:
    """Every verb, a crashed run, a resumed run, cleanup: the whole API on one client."""
    mgr = cp.manager(CTX)
    assert await mgr.save_section("summary", {"a": 1})
    assert await mgr.load_section("summary") == {"a": 1}
    assert await mgr.load_all_sections() == {"summary": {"a": 1}}
    assert (await mgr.get_progress()).completed_sections == ["summary"]
    assert await mgr.has_checkpoints()
    assert (await mgr.get_checkpoint_age() or 0.0) >= 0.0
    with pytest.raises(RuntimeError):
        async with cp.run(CTX, plan=PLAN) as run:
            await run.step("data_analysis", lambda: "d")
            raise RuntimeError("crash")
    async with cp.run(CTX, plan=PLAN) as run:
        assert run.resumed
        for name in PLAN:
            await run.step(name, lambda name=name: name)
    assert run.result()["resumed_sections"] == 2
    assert await mgr.has_checkpoints() is False


async def test_every_way_to_build_a_cluster_checkpointer(
    redis_cluster: LocalCluster, cluster_client: WholeClusterClient
) -> None:
    cfg = CheckpointConfig(budget_ms=2000, strict=True)
    plain_url = redis_cluster.startup_url
    built = [
        Checkpointer(RedisCluster.from_url(plain_url), cfg, close_client=True),
        Checkpointer(
            RedisCluster.from_url(plain_url, decode_responses=True), cfg, close_client=True
        ),
        Checkpointer.from_url(plain_url, config=cfg, cluster=True),
        Checkpointer.from_url(redis_cluster.url, config=cfg),  # redis+cluster:// scheme
    ]
    for cp in built:
        async with cp:
            assert isinstance(cp.store.client, RedisCluster)
            await full_cycle(cp)
        assert await only_done_keys_left(cluster_client)
        await cluster_client.flushall()


async def test_a_standalone_client_on_a_cluster_node_fails_loudly(
    redis_cluster: LocalCluster, cluster_client: WholeClusterClient
) -> None:
    """Forgetting cluster=True is an error the caller sees (MOVED), never silent data loss."""
    cfg = CheckpointConfig(budget_ms=2000, strict=True)
    ctxs = [RunContext(user_id="u", run_id=f"r{i}") for i in range(12)]
    async with Checkpointer.from_url(redis_cluster.startup_url, config=cfg, cluster=False) as cp:
        errors: list[str] = []
        for c in ctxs:
            try:
                await cp.manager(c).save_section("s", 1)
            except CheckpointUnavailable as exc:
                errors.append(str(exc))
    assert 0 < len(errors) < len(ctxs)  # the seed node's own slots work, the others are refused
    assert all("refused the command (MOVED)" in e for e in errors), errors


async def test_scripts_unknown_to_the_node_are_sent_once_then_by_sha(
    redis_cluster: LocalCluster, cluster_client: WholeClusterClient
) -> None:
    """A freshly promoted primary has an empty script cache: NOSCRIPT → EVAL, then EVALSHA."""
    async with Checkpointer(cluster_client, CheckpointConfig(budget_ms=2000)) as cp:
        mgr = cp.manager(CTX)
        assert await mgr.save_section("summary", 1)
        for port in redis_cluster.ports():
            assert command(port, "SCRIPT", "FLUSH") == "OK"
        owner = redis_cluster.owner_port(mgr.keys.meta)
        async with monitored([owner]) as seen:
            assert await mgr.save_section("data", 2)
            assert await mgr.save_section("more", 3)
        sent = [line.split()[0].strip('"').upper() for line in seen[owner]]
        assert sent == ["EVALSHA", "EVAL", "EVALSHA"], seen
        assert await mgr.load_all_sections() == {"summary": 1, "data": 2, "more": 3}


HOSTILE = ["a:b", "a", "b:c", "*", "?", "[a-z]", "{x}", "}{", "%3A", ":", "🚀", "\\", "%"]
ids = st.text(min_size=1, max_size=30).filter(
    lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    pairs=st.lists(
        st.tuples(st.sampled_from(HOSTILE) | ids, st.sampled_from(HOSTILE) | ids),
        min_size=2, max_size=5, unique=True,
    )
)  # fmt: skip
def test_distinct_pairs_never_see_each_others_data_across_slots(
    redis_cluster: LocalCluster, pairs: list[tuple[str, str]]
) -> None:
    async def scenario() -> None:
        async with Checkpointer(
            RedisCluster.from_url(redis_cluster.startup_url),
            CheckpointConfig(budget_ms=2000),
            registry=CollectorRegistry(),
            close_client=True,
        ) as cp:
            managers = [cp.manager(RunContext(user_id=u, run_id=r)) for u, r in pairs]
            for i, mgr in enumerate(managers):
                await mgr.cleanup()
                assert await mgr.save_section("summary", {"owner": i})
            assert await managers[0].cleanup()
            for i, mgr in enumerate(managers[1:], start=1):
                assert await mgr.load_all_sections() == {"summary": {"owner": i}}
                await mgr.cleanup()

    asyncio.run(scenario())


async def test_connections_a_node_closed_are_reopened_not_failed(
    redis_cluster: LocalCluster,
) -> None:
    """A cluster node hands out its free connections unchecked and the library runs without
    redis-py's retries: before the fix, the first call after a node closed its idle
    connections (restart, idle timeout, CLIENT KILL) failed (strict mode raises)."""
    cfg = CheckpointConfig(budget_ms=1000, strict=True)
    async with Checkpointer.from_url(
        redis_cluster.url, config=cfg, registry=CollectorRegistry()
    ) as cp:
        mgr = cp.manager(RunContext(user_id="reopened", run_id="run-1"))
        assert await mgr.save_section("summary", {"n": 1}) is True
        for _ in range(2):
            killed = 0
            for node in cp.store.client.get_nodes():
                for conn in list(node._free):
                    host, port = conn._writer.get_extra_info("sockname")[:2]
                    killed += command(node.port, "CLIENT", "KILL", "ADDR", f"{host}:{port}") == 1
            assert killed >= 1
            await asyncio.sleep(0.1)  # the closes reach this loop
            assert await mgr.load_all_sections() == {"summary": {"n": 1}}
