"""Atomicity under concurrency, and the cost of each verb in Redis commands (MONITOR)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from sidecar import CheckpointConfig, Checkpointer, RunContext

CTX = RunContext(user_id="alice", run_id="run-1")


async def test_64_concurrent_saves_from_several_clients_lose_nothing(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    registry = CollectorRegistry()
    cfg = CheckpointConfig(budget_ms=5000)
    checkpointers = [
        Checkpointer.from_url(redis_url, config=cfg, registry=registry) for _ in range(4)
    ]
    try:
        saves = [
            checkpointers[i % 4].manager(CTX).save_section(f"section-{i:02d}", {"i": i})
            for i in range(64)
        ]
        assert all(await asyncio.gather(*saves))
        mgr = checkpointers[0].manager(CTX)
        loaded = await mgr.load_all_sections()
        progress = await mgr.get_progress()
    finally:
        for cp in checkpointers:
            await cp.aclose()
    expected = {f"section-{i:02d}" for i in range(64)}
    assert set(loaded) == expected
    assert set(progress.completed_sections) == expected
    assert len(progress.completed_sections) == 64
    assert progress.total_sections == 64


@contextlib.asynccontextmanager
async def monitored(redis_url: str) -> AsyncIterator[list[str]]:
    """Collect the commands clients send (MONITOR lines tagged 'lua' come from scripts)."""
    lines: list[str] = []
    monitor_client = aioredis.Redis.from_url(redis_url)
    async with monitor_client.monitor() as monitor:

        async def collect() -> None:
            while True:
                info = await monitor.next_command()
                if info.get("client_type") != "lua":
                    lines.append(str(info["command"]))

        task = asyncio.create_task(collect())
        await asyncio.sleep(0.05)
        yield lines
        await asyncio.sleep(0.1)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await monitor_client.aclose()


@pytest.mark.standalone_only(
    "MONITOR of one server; tests/cluster/test_cluster_verbs.py counts on every cluster node"
)
@pytest.mark.parametrize("refresh", [False, True])
async def test_each_verb_costs_exactly_one_command(
    redis_url: str, redis_client: aioredis.Redis, refresh: bool
) -> None:
    cfg = CheckpointConfig(budget_ms=5000, refresh_ttl_on_read=refresh)
    async with Checkpointer.from_url(redis_url, config=cfg, registry=CollectorRegistry()) as cp:
        mgr = cp.manager(CTX)
        verbs = {
            "save_section": lambda: mgr.save_section("summary", {"x": 1}),
            "load_section": lambda: mgr.load_section("summary"),
            "load_all_sections": mgr.load_all_sections,
            "get_progress": mgr.get_progress,
            "has_checkpoints": mgr.has_checkpoints,
            "get_checkpoint_age": mgr.get_checkpoint_age,
            "cleanup": mgr.cleanup,
        }
        for call in verbs.values():  # warm-up: connection handshake, scripts loaded
            await call()
        await mgr.save_section("summary", {"x": 1})
        for verb, call in verbs.items():
            async with monitored(redis_url) as lines:
                await call()
            assert len(lines) == 1, (verb, lines)
            assert lines[0].split()[0].strip('"').upper() in {
                "EVALSHA", "HGET", "HGETALL", "EXISTS", "UNLINK",
            }, (verb, lines)  # fmt: skip


async def test_no_keys_or_scan_ever(redis_url: str, redis_client: aioredis.Redis) -> None:
    await redis_client.config_resetstat()
    async with Checkpointer.from_url(
        redis_url, config=CheckpointConfig(budget_ms=5000), registry=CollectorRegistry()
    ) as cp:
        async with cp.run(CTX, plan=["a", "b"]) as run:
            await run.step("a", lambda: 1)
            await run.step("b", lambda: 2)
        mgr = cp.manager(CTX)
        await mgr.save_section("a", 1)
        await mgr.load_all_sections()
        await mgr.has_checkpoints()
        await mgr.get_progress()
        await mgr.cleanup()
    stats = await redis_client.info("commandstats")
    assert stats, "commandstats must report the commands sent"
    assert not any(name in stats for name in ("cmdstat_keys", "cmdstat_scan"))
    assert "cmdstat_evalsha" in stats
