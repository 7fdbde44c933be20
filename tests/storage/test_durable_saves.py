"""min_replicas / min_local_fsync through the library's verbs and runs: confirmed, or False and
outcome ``unreplicated`` (best effort), or CheckpointTimeout (strict); the breaker stays shut
(Redis answered). On the session cluster every primary has one replica; the session server
has none."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from cluster_support import LocalCluster, commands
from prometheus_client import CollectorRegistry

from sidecar import CheckpointConfig, Checkpointer, CheckpointTimeout, RunContext
from sidecar.keys import run_keys

pytestmark = pytest.mark.backends("standalone", "cluster")
CTX = RunContext(user_id="user-1", run_id="run-1")


def unreplicated(registry: CollectorRegistry, operation: str = "save_section") -> float:
    return (
        registry.get_sample_value(
            "checkpoint_operation_duration_seconds_count",
            {"operation": operation, "outcome": "unreplicated"},
        )
        or 0
    )


async def test_more_replicas_than_there_are_is_not_confirmed(
    redis_client: aioredis.Redis, registry: CollectorRegistry
) -> None:
    cfg = CheckpointConfig(budget_ms=1000, min_replicas=3, breaker_failures=2)
    async with Checkpointer(redis_client, cfg, registry=registry) as cp:
        mgr = cp.manager(CTX)
        for _ in range(2):
            assert await mgr.save_section("summary", {"v": 1}) is False
        assert await mgr.load_section("summary") == {"v": 1}  # on the primary all the same
    assert unreplicated(registry) == 2
    assert registry.get_sample_value("checkpoint_circuit_open") == 0  # Redis answered


async def test_strict_mode_raises_checkpoint_timeout(
    redis_client: aioredis.Redis, registry: CollectorRegistry
) -> None:
    cfg = CheckpointConfig(budget_ms=1000, min_replicas=3, strict=True)
    async with Checkpointer(redis_client, cfg, registry=registry) as cp:
        with pytest.raises(CheckpointTimeout, match="saved on the primary, not confirmed"):
            await cp.manager(CTX).save_section("summary", {"v": 1})
        with pytest.raises(CheckpointTimeout):
            async with cp.run(CTX, plan=["summary", "actions"]) as run:
                await run.step("actions", lambda: {"v": 2})
    assert unreplicated(registry) == 2


@pytest.mark.backends("cluster")
async def test_on_the_cluster_a_save_waits_for_its_shards_replica(
    redis_cluster: LocalCluster, redis_client: aioredis.Redis, registry: CollectorRegistry
) -> None:
    cfg = CheckpointConfig(budget_ms=2000, min_replicas=1, strict=True)
    async with Checkpointer(redis_client, cfg, registry=registry) as cp:
        contexts = [RunContext(user_id="u", run_id=f"r{i}") for i in range(12)]  # all shards
        for ctx in contexts:
            assert await cp.manager(ctx).save_section("summary", {"run": ctx.run_id})
        async with cp.run(contexts[0], plan=["a", "b"]) as run:
            for name in ("a", "b"):
                await run.step(name, lambda name=name: {"step": name})
    for ctx in contexts[1:]:
        key = run_keys("ckpt", ctx.user_id, ctx.run_id).sections
        owner = redis_cluster.owner_port(key)
        (replica,) = redis_cluster.replica_ports_of(owner)
        # confirmed means on the replica already: read it there, no wait
        assert commands(replica, ("READONLY",), ("HEXISTS", key, "summary"))[1] == 1
    assert unreplicated(registry) == 0
