"""Resumable runs: resume, cleanup after success, keep after failure, lease and fencing."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from leftovers import only_done_keys_left
from prometheus_client import CollectorRegistry

from sidecar import (
    CheckpointConfig,
    Checkpointer,
    LeaseHeld,
    LeaseLost,
    Progress,
    RunContext,
)

CTX = RunContext(user_id="alice", run_id="report-7")
PLAN = ["summary", "data_analysis", "recommendations", "action_items"]


class Crash(Exception):
    pass


async def attempt(cp: Checkpointer, crash_after: int | None, calls: list[str]) -> dict[str, object]:
    """One attempt of the seed's reporting agent; crashes after ``crash_after`` sections."""
    async with cp.run(CTX, plan=PLAN) as run:
        for i, name in enumerate(PLAN):
            if crash_after is not None and i == crash_after:
                raise Crash(name)

            async def produce(name: str = name) -> dict[str, str]:
                calls.append(name)
                return {"text": f"{name} body"}

            await run.step(name, produce)
    return run.result()


async def test_resume_after_a_crash_produces_only_the_missing_sections(
    cp: Checkpointer, redis_client: aioredis.Redis, registry: CollectorRegistry
) -> None:
    calls: list[str] = []
    with pytest.raises(Crash):
        await attempt(cp, crash_after=2, calls=calls)
    assert calls == ["summary", "data_analysis"]
    progress = await cp.manager(CTX).get_progress()
    assert progress.completed_sections == ["summary", "data_analysis"]
    assert progress.total_sections == 4
    assert progress.in_progress is None
    result = await attempt(cp, crash_after=None, calls=calls)
    assert calls == ["summary", "data_analysis", "recommendations", "action_items"]
    assert result == {
        "success": True,
        "report": {name: {"text": f"{name} body"} for name in PLAN},
        "checkpoints_used": True,
        "resumed_sections": 2,
    }
    assert await only_done_keys_left(redis_client)  # cleanup after success, lease released
    sample = registry.get_sample_value
    assert sample("checkpoint_runs_started_total", {"mode": "fresh"}) == 1
    assert sample("checkpoint_runs_started_total", {"mode": "resumed"}) == 1
    assert sample("checkpoint_runs_finished_total", {"status": "failed"}) == 1
    assert sample("checkpoint_runs_finished_total", {"status": "completed"}) == 1
    assert sample("checkpoint_sections_total", {"source": "restored"}) == 2
    assert sample("checkpoint_sections_total", {"source": "produced"}) == 4


async def test_fresh_run_result(cp: Checkpointer) -> None:
    result = await attempt(cp, crash_after=None, calls=[])
    assert result["success"] is True
    assert result["checkpoints_used"] is False
    assert result["resumed_sections"] == 0
    assert list(result["report"]) == PLAN  # type: ignore[call-overload]


async def test_run_properties_and_in_progress(cp: Checkpointer) -> None:
    mgr = cp.manager(CTX)
    await mgr.save_section("summary", "s")
    seen: list[Progress] = []
    async with cp.run(CTX, plan=PLAN) as run:
        assert run.resumed is True
        assert run.restored == {"summary": "s"}
        assert run.remaining == PLAN[1:]
        assert run.fencing_token >= 1

        async def produce() -> str:
            seen.append(await mgr.get_progress())
            return "d"

        await run.step("data_analysis", produce)
        assert run.remaining == PLAN[2:]
        await run.step("recommendations", lambda: "r")  # a plain callable works too
        await run.step("action_items", lambda: "a")
        assert await run.step("action_items", lambda: "again") == "a"  # never produced twice
    assert seen[0].in_progress == "data_analysis"
    assert seen[0].completed_sections == ["summary"]


async def test_second_concurrent_run_raises_lease_held(cp: Checkpointer) -> None:
    async with cp.run(CTX, plan=PLAN) as run:
        await run.step("summary", lambda: "s")
        with pytest.raises(LeaseHeld):
            async with cp.run(CTX, plan=PLAN):
                pass
    # released on exit: a new attempt gets it
    async with cp.run(CTX, plan=PLAN) as again:
        assert again.resumed is False  # the first one completed and cleaned up


async def test_lease_released_after_failure(cp: Checkpointer, redis_client: aioredis.Redis) -> None:
    with pytest.raises(Crash):
        await attempt(cp, crash_after=1, calls=[])
    assert await redis_client.exists(cp.manager(CTX).keys.lease) == 0
    async with cp.run(CTX, plan=PLAN) as run:
        assert run.resumed


async def test_fencing_token_grows_with_every_acquisition(cp: Checkpointer) -> None:
    tokens = []
    for _ in range(3):
        with pytest.raises(Crash):
            async with cp.run(CTX, plan=PLAN) as run:
                tokens.append(run.fencing_token)
                await run.step("summary", lambda: "s")
                raise Crash
    assert tokens == sorted(tokens) and len(set(tokens)) == 3


async def test_takeover_fences_out_the_old_attempt(
    redis_client: aioredis.Redis, registry: CollectorRegistry
) -> None:
    cfg = CheckpointConfig(lease_ttl_seconds=1, budget_ms=1000)
    async with Checkpointer(redis_client, cfg, registry=registry) as cp:
        old = cp.run(CTX, plan=PLAN)
        await old.__aenter__()
        await old.step("summary", lambda: "old summary")
        # the old worker stalls: its renewal stops and its lease expires
        assert old._renewer is not None
        old._renewer.cancel()
        await asyncio.sleep(1.2)
        async with cp.run(CTX, plan=PLAN) as new:
            assert new.fencing_token > old.fencing_token
            assert new.restored == {"summary": "old summary"}
            with pytest.raises(LeaseLost):  # late write of the paused worker
                await old.step("data_analysis", lambda: "late")
            with pytest.raises(LeaseLost):
                await old.step("recommendations", lambda: "later")
            await new.step("data_analysis", lambda: "new")
            assert await cp.manager(CTX).load_section("data_analysis") == "new"
            with pytest.raises(LeaseLost):
                await old.__aexit__(None, None, None)  # no success, no cleanup for it
            assert old.result()["success"] is False
            assert await cp.manager(CTX).load_all_sections() == {
                "summary": "old summary",
                "data_analysis": "new",
            }
    assert registry.get_sample_value(  # refused before producing: its lease had expired
        "checkpoint_operation_duration_seconds_count",
        {"operation": "mark_in_progress", "outcome": "rejected"},
    ) == 1  # fmt: skip


async def test_expired_lease_is_retaken_when_nobody_else_took_it(
    redis_client: aioredis.Redis, registry: CollectorRegistry
) -> None:
    cfg = CheckpointConfig(lease_ttl_seconds=1, budget_ms=1000)
    async with Checkpointer(redis_client, cfg, registry=registry) as cp:
        async with cp.run(CTX, plan=PLAN) as run:
            assert run._renewer is not None
            run._renewer.cancel()
            await asyncio.sleep(1.2)
            assert await redis_client.exists(cp.manager(CTX).keys.lease) == 0
            await run.step("summary", lambda: "s")  # re-takes the lease
            assert await redis_client.get(cp.manager(CTX).keys.lease) is not None
        assert await only_done_keys_left(redis_client)


async def test_lease_is_renewed_while_the_block_is_open(
    redis_client: aioredis.Redis, registry: CollectorRegistry
) -> None:
    cfg = CheckpointConfig(lease_ttl_seconds=1, budget_ms=1000)
    async with Checkpointer(redis_client, cfg, registry=registry) as cp:
        async with cp.run(CTX, plan=PLAN) as run:
            await asyncio.sleep(1.6)  # longer than the lease: renewal keeps it
            await run.step("summary", lambda: "s")
            assert registry.get_sample_value(
                "checkpoint_operation_duration_seconds_count",
                {"operation": "lease_renew", "outcome": "ok"},
            ) >= 2  # fmt: skip


async def test_ttl_expiring_between_two_sections_of_a_live_run(
    redis_client: aioredis.Redis, registry: CollectorRegistry
) -> None:
    cfg = CheckpointConfig(ttl_seconds=1, lease_ttl_seconds=30, budget_ms=1000)
    async with Checkpointer(redis_client, cfg, registry=registry) as cp:
        async with cp.run(CTX, plan=PLAN) as run:
            await run.step("summary", lambda: "s")
            await asyncio.sleep(1.3)  # the run's data expires; the lease (30 s) does not
            assert await cp.manager(CTX).has_checkpoints() is False
            await run.step("data_analysis", lambda: "d")  # the run goes on
            assert await cp.manager(CTX).load_all_sections() == {"data_analysis": "d"}
        assert run.result()["report"] == {"summary": "s", "data_analysis": "d"}
