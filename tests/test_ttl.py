"""TTL: one expiry for the whole run, sliding on save, never a key without a TTL."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from sidecar import CheckpointConfig, Checkpointer, RunContext

CTX = RunContext(user_id="alice", run_id="run-1")


async def _ttls(client: aioredis.Redis) -> dict[bytes, int]:
    return {key: await client.pttl(key) for key in await client.keys("*")}


async def test_every_save_resets_the_ttl_of_all_data_keys(
    redis_client: aioredis.Redis, registry: CollectorRegistry
) -> None:
    cfg = CheckpointConfig(ttl_seconds=30, budget_ms=1000)
    async with Checkpointer(redis_client, cfg, registry=registry) as cp:
        mgr = cp.manager(CTX)
        await mgr.save_section("summary", 1)
        await redis_client.pexpire(mgr.keys.sections, 5000)
        await redis_client.pexpire(mgr.keys.meta, 4000)
        await mgr.save_section("data_analysis", 2)
        ttls = await _ttls(redis_client)
    assert set(ttls) == {mgr.keys.sections.encode(), mgr.keys.meta.encode()}
    assert all(29_000 < ttl <= 30_000 for ttl in ttls.values()), ttls


async def test_loads_do_not_extend_unless_configured(
    redis_client: aioredis.Redis, registry: CollectorRegistry
) -> None:
    for refresh in (False, True):
        cfg = CheckpointConfig(ttl_seconds=30, budget_ms=1000, refresh_ttl_on_read=refresh)
        async with Checkpointer(redis_client, cfg, registry=registry) as cp:
            mgr = cp.manager(CTX)
            await mgr.save_section("summary", 1)
            for key in (mgr.keys.sections, mgr.keys.meta):
                await redis_client.pexpire(key, 10_000)
            await mgr.load_section("summary")
            after_one = await _ttls(redis_client)
            for key in (mgr.keys.sections, mgr.keys.meta):
                await redis_client.pexpire(key, 10_000)
            await mgr.load_all_sections()
            after_all = await _ttls(redis_client)
            await mgr.cleanup()
        for ttls in (after_one, after_all):
            if refresh:
                assert all(ttl > 29_000 for ttl in ttls.values()), ttls
            else:
                assert all(ttl <= 10_000 for ttl in ttls.values()), ttls


async def test_sliding_expiry_keeps_a_live_run_and_drops_an_idle_one(
    redis_client: aioredis.Redis, registry: CollectorRegistry
) -> None:
    cfg = CheckpointConfig(ttl_seconds=1, budget_ms=1000)
    async with Checkpointer(redis_client, cfg, registry=registry) as cp:
        live = cp.manager(RunContext(user_id="u", run_id="live"))
        idle = cp.manager(RunContext(user_id="u", run_id="idle"))
        await live.save_section("s0", 0)
        await idle.save_section("s0", 0)
        for i in range(1, 4):  # 1.8 s in all: longer than the TTL, but saves keep sliding it
            await asyncio.sleep(0.6)
            await live.save_section(f"s{i}", i)
        assert list(await live.load_all_sections()) == ["s0", "s1", "s2", "s3"]
        assert await idle.has_checkpoints() is False
        assert await idle.get_progress() == type(await idle.get_progress())()


async def test_no_key_written_by_the_library_lacks_a_ttl(
    redis_client: aioredis.Redis, registry: CollectorRegistry
) -> None:
    cfg = CheckpointConfig(ttl_seconds=60, lease_ttl_seconds=10, budget_ms=1000)
    async with Checkpointer(redis_client, cfg, registry=registry) as cp:
        run_cm = cp.run(CTX, plan=["a", "b", "c"])
        seen: list[dict[bytes, int]] = []
        try:
            async with run_cm as run:
                seen.append(await _ttls(redis_client))  # lease + meta only
                await run.step("a", lambda: 1)
                seen.append(await _ttls(redis_client))

                async def produce_b() -> int:
                    seen.append(await _ttls(redis_client))  # in progress marked
                    return 2

                await run.step("b", produce_b)
                raise RuntimeError("crash")
        except RuntimeError:
            pass
        seen.append(await _ttls(redis_client))  # after failure: checkpoints kept
        mgr = cp.manager(CTX)
        await mgr.save_section("x", 1)
        seen.append(await _ttls(redis_client))
    assert all(snapshot for snapshot in seen)
    for snapshot in seen:
        assert all(ttl > 0 for ttl in snapshot.values()), snapshot
