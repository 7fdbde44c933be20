"""The library under failure (issue 9, items 1-8): degraded runs, OOM, the breaker, fencing,
entering and leaving a run. Each test failed on the code before the change and names the rule
it checks. Servers of the test's own where the test pauses, starves or stops them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.asyncio.retry
from leftovers import only_done_keys_left
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from sidecar import (
    CheckpointConfig,
    Checkpointer,
    CheckpointUnavailable,
    LeaseHeld,
    LeaseLost,
    RunContext,
    lua,
)
from sidecar.server.embedded import EmbeddedServer
from sidecar.store import build_client

CTX = RunContext(user_id="alice", run_id="report-9")
PLAN = ["summary", "data_analysis", "recommendations", "action_items"]


class Crash(Exception):
    pass


def sample(registry: CollectorRegistry, operation: str, outcome: str) -> float:
    value = registry.get_sample_value(
        "checkpoint_operation_duration_seconds_count",
        {"operation": operation, "outcome": outcome},
    )
    return value or 0.0


@pytest.fixture
async def admin(private_server: EmbeddedServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(private_server.url, socket_timeout=None)
    yield client
    await client.aclose()


async def snapshot(client: aioredis.Redis) -> dict[bytes, Any]:
    """Every key's value (DUMP) and whether it has a TTL: to prove nothing changed."""
    return {k: (await client.dump(k), await client.pttl(k) > 0) for k in await client.keys("*")}


async def paused_writes(client: aioredis.Redis, ms: int) -> None:
    """Redis holds every write command for ``ms``: a slow Redis, writes land afterwards."""
    await client.execute_command("CLIENT", "PAUSE", ms, "WRITE")


async def landed(client: aioredis.Redis, lease_key: str) -> None:
    """Wait until the timed-out acquire, sent before a freeze, has landed after the thaw."""
    for _ in range(100):
        if await client.exists(lease_key):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the acquire sent before the freeze never landed")


# --- 1. a degraded run never writes unfenced and never deletes what it does not own -----------


async def test_timed_out_acquire_that_landed_is_confirmed_by_the_next_step(
    private_server: EmbeddedServer, admin: aioredis.Redis
) -> None:
    cfg = CheckpointConfig(budget_ms=100, lease_ttl_seconds=60)
    async with Checkpointer.from_url(private_server.url, config=cfg,
                                     registry=CollectorRegistry()) as cp:  # fmt: skip
        await cp.connect()
        assert await cp.manager(CTX).save_section("summary", "from an earlier attempt")
        await admin.script_load(lua.ACQUIRE_LEASE.source)  # so that EVALSHA alone does it
        private_server.pause()  # frozen: the acquire is sent, then the budget gives up on it
        run = cp.run(CTX, plan=PLAN)
        await run.__aenter__()  # the acquire times out (best effort): the run is unconfirmed
        assert run.confirmed is False and run.restored == {}
        private_server.resume()  # thawed: the acquire lands, for this very attempt
        await landed(admin, cp.manager(CTX).keys.lease)
        produced: list[str] = []
        assert await run.step("summary", lambda: produced.append("x") or "again") == (
            "from an earlier attempt"
        )  # the step's acquire (same owner) confirmed it and restored: nothing produced
        assert produced == [] and run.confirmed is True
        with pytest.raises(LeaseHeld):
            async with cp.run(CTX, plan=PLAN):  # another attempt: the run is held
                pass
        await run.__aexit__(Crash, Crash(), None)
        assert await admin.exists(cp.manager(CTX).keys.lease) == 0


async def test_timed_out_acquire_that_landed_is_released_when_the_block_ends(
    private_server: EmbeddedServer, admin: aioredis.Redis
) -> None:
    cfg = CheckpointConfig(budget_ms=100, lease_ttl_seconds=60)
    async with Checkpointer.from_url(private_server.url, config=cfg,
                                     registry=CollectorRegistry()) as cp:  # fmt: skip
        await cp.connect()
        await admin.script_load(lua.ACQUIRE_LEASE.source)
        private_server.pause()
        with pytest.raises(Crash):
            async with cp.run(CTX, plan=PLAN) as run:
                assert run.confirmed is False
                private_server.resume()
                await landed(admin, cp.manager(CTX).keys.lease)  # held for 60 s, unrenewed
                raise Crash
        assert await admin.exists(cp.manager(CTX).keys.lease) == 0  # not held for 60 s
        async with cp.run(CTX, plan=PLAN) as again:  # the next attempt is not LeaseHeld
            assert again.confirmed


async def test_unconfirmed_run_never_writes_over_the_attempt_that_holds_the_run(
    private_server: EmbeddedServer, admin: aioredis.Redis
) -> None:
    cfg = CheckpointConfig(budget_ms=100)
    async with Checkpointer.from_url(private_server.url, config=cfg,
                                     registry=CollectorRegistry()) as cp:  # fmt: skip
        await cp.connect()
        await paused_writes(admin, 300)
        degraded = cp.run(CTX, plan=PLAN)
        await degraded.__aenter__()
        assert degraded.confirmed is False
        await asyncio.sleep(0.5)
        holder = cp.run(CTX, plan=PLAN)
        await holder.acquire()
        assert await holder.save("summary", "the holder's summary")
        before = await snapshot(admin)
        produced: list[str] = []
        with pytest.raises(LeaseHeld):  # it learns before producing, and writes nothing
            await degraded.step("summary", lambda: produced.append("x") or "overwrite")
        await degraded.__aexit__(LeaseHeld, LeaseHeld("held"), None)
        assert produced == []
        assert await snapshot(admin) == before  # not one byte of the holder's run changed
        assert await cp.manager(CTX).load_section("summary") == "the holder's summary"
        await holder.complete()


async def test_unconfirmed_run_leaving_normally_never_deletes_another_attempts_run(
    private_server: EmbeddedServer, admin: aioredis.Redis
) -> None:
    cfg = CheckpointConfig(budget_ms=100)
    async with Checkpointer.from_url(private_server.url, config=cfg,
                                     registry=CollectorRegistry()) as cp:  # fmt: skip
        await cp.connect()
        await paused_writes(admin, 300)
        degraded = cp.run(CTX, plan=PLAN)
        await degraded.__aenter__()
        await asyncio.sleep(0.5)
        holder = cp.run(CTX, plan=PLAN)
        await holder.acquire()
        await holder.save("summary", "kept")
        before = await snapshot(admin)
        await degraded.__aexit__(None, None, None)  # "success" of the attempt that never held it
        assert await snapshot(admin) == before
        await holder.complete()


# --- 2. writes that free memory work under OOM ------------------------------------------------


async def test_renew_release_and_cleanup_work_under_oom_saves_and_acquires_do_not(
    private_server: EmbeddedServer, admin: aioredis.Redis
) -> None:
    registry = CollectorRegistry()
    cfg = CheckpointConfig(budget_ms=1000, breaker_failures=1000)
    other = RunContext(user_id="bob", run_id="report-10")
    async with Checkpointer.from_url(private_server.url, config=cfg, registry=registry) as cp:
        finishing = cp.run(CTX, plan=PLAN)
        await finishing.__aenter__()
        await finishing.step("summary", lambda: "s")
        failing = cp.run(other, plan=PLAN)
        await failing.__aenter__()
        await failing.step("summary", lambda: "s")
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", 1)
        try:
            await finishing.renew()  # renew: works under OOM
            before = await snapshot(admin)
            assert await cp.manager(CTX).save_section("data_analysis", "x") is False  # refused
            third = cp.run(RunContext(user_id="carol", run_id="r"), plan=PLAN)
            await third.__aenter__()  # refused (OOM): unconfirmed, nothing written
            assert third.confirmed is False
            await third.__aexit__(Crash, Crash(), None)
            assert await snapshot(admin) == before
            await failing.__aexit__(Crash, Crash(), None)  # release under OOM
            await finishing.__aexit__(None, None, None)  # cleanup after success under OOM
        finally:
            await admin.config_set("maxmemory", 0)
        assert finishing.result()["success"] is True
        assert await admin.exists(*cp.manager(CTX).keys.all[:3]) == 0
        assert await admin.exists(cp.manager(other).keys.lease) == 0
        assert await cp.manager(other).load_section("summary") == "s"  # kept for the next try
    for operation in ("lease_renew", "lease_release", "cleanup"):
        assert sample(registry, operation, "error") == 0, operation
    assert sample(registry, "save_section", "error") == 1
    assert sample(registry, "lease_acquire", "error") == 1


# --- 3. refusals are not outages ----------------------------------------------------------------


@pytest.mark.parametrize("refusal", ["OOM", "NOPERM"])
async def test_refusals_never_open_the_circuit_and_reads_keep_working(
    private_server: EmbeddedServer, admin: aioredis.Redis, refusal: str
) -> None:
    registry = CollectorRegistry()
    cfg = CheckpointConfig(budget_ms=1000, breaker_failures=2)
    url = private_server.url
    async with Checkpointer.from_url(url, config=cfg, registry=CollectorRegistry()) as writer:
        assert await writer.manager(CTX).save_section("summary", "s")
    if refusal == "OOM":
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", 1)
    else:  # a user that may read but not write
        await admin.acl_setuser("reader", enabled=True, passwords=["+pw"], keys=["*"],
                                commands=["+@read", "+@connection", "+evalsha", "+eval"])  # fmt: skip
        url = url.replace("redis://", "redis://reader:pw@")
    try:
        async with Checkpointer.from_url(url, config=cfg, registry=registry) as cp:
            mgr = cp.manager(CTX)
            for _ in range(5):
                assert await mgr.save_section("data_analysis", "d") is False
            assert await mgr.load_section("summary") == "s"  # not skipped: Redis answers
            assert await mgr.has_checkpoints() is True
            assert cp.breaker.is_open is False
    finally:
        await admin.config_set("maxmemory", 0)
    assert sample(registry, "save_section", "error") == 5
    assert sample(registry, "save_section", "skipped") == 0
    assert sample(registry, "load_section", "skipped") == 0
    assert registry.get_sample_value("checkpoint_circuit_open") == 0


# --- 4. fencing tokens never go backwards; a finished run is never recreated -------------------


async def test_paused_attempt_cannot_write_after_another_completed_the_run(
    redis_client: aioredis.Redis, registry: CollectorRegistry
) -> None:
    cfg = CheckpointConfig(lease_ttl_seconds=1, budget_ms=1000)
    async with Checkpointer(redis_client, cfg, registry=registry) as cp:
        a = cp.run(CTX, plan=PLAN)
        await a.__aenter__()
        await a.step("summary", lambda: "a's summary")
        assert a._renewer is not None
        a._renewer.cancel()  # A's process is paused: its event loop does nothing...
        await asyncio.sleep(1.2)  # ...past its lease
        async with cp.run(CTX, plan=PLAN) as b:  # B acquires, resumes and completes
            for name in PLAN:
                await b.step(name, lambda name=name: f"b's {name}")
        assert b.fencing_token > a.fencing_token
        assert await only_done_keys_left(redis_client)
        produced: list[str] = []
        with pytest.raises(LeaseLost):  # A wakes and saves: refused, before paying for it
            await a.step("data_analysis", lambda: produced.append("x") or "late")
        assert produced == []
        with pytest.raises(LeaseLost):
            await a.save("data_analysis", "late")  # even a direct save of the section
        assert await only_done_keys_left(redis_client)  # no key of the run recreated
        with pytest.raises(LeaseLost):
            await a.__aexit__(None, None, None)
        assert await only_done_keys_left(redis_client)
        async with cp.run(CTX, plan=PLAN) as c:  # a new attempt after the completion
            assert c.fencing_token > b.fencing_token  # tokens never go backwards
            assert c.resumed is False


async def test_fencing_tokens_grow_across_expiry_and_cleanup(
    redis_client: aioredis.Redis, registry: CollectorRegistry
) -> None:
    cfg = CheckpointConfig(ttl_seconds=1, lease_ttl_seconds=1, budget_ms=1000)
    tokens: list[int] = []
    async with Checkpointer(redis_client, cfg, registry=registry) as cp:
        for _ in range(2):
            with pytest.raises(Crash):
                async with cp.run(CTX, plan=PLAN) as run:
                    tokens.append(run.fencing_token)
                    raise Crash
            await asyncio.sleep(1.2)  # everything of the run expires
            assert await redis_client.exists(*cp.manager(CTX).keys.all) == 0
        await cp.manager(CTX).cleanup()
        async with cp.run(CTX, plan=PLAN) as run:
            tokens.append(run.fencing_token)
    assert tokens == sorted(tokens) and len(set(tokens)) == 3
    assert tokens[0] > 1_000_000  # server clock in microseconds, not a counter from 1


# --- 5. entering a run cannot leak the lease ---------------------------------------------------


async def test_an_undecodable_section_is_discarded_and_produced_again(
    cp: Checkpointer, redis_client: aioredis.Redis, registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    mgr = cp.manager(CTX)
    assert await mgr.save_section("summary", "ok summary")
    assert await mgr.save_section("data_analysis", "ok analysis")
    await redis_client.hset(mgr.keys.sections, "data_analysis", b"{not json")
    async with cp.run(CTX, plan=PLAN) as run:
        assert run.restored == {"summary": "ok summary"}
        value = await run.step("data_analysis", lambda: "produced again")
        assert value == "produced again"
        for name in PLAN[2:]:
            await run.step(name, lambda: "x")
    assert run.result()["success"] is True
    assert registry.get_sample_value("checkpoint_sections_total", {"source": "discarded"}) == 1
    assert "'data_analysis' does not decode" in caplog.text
    assert "{not json" not in caplog.text  # the name, never the content


async def test_a_cancelled_acquire_that_landed_is_released(
    private_server: EmbeddedServer, admin: aioredis.Redis
) -> None:
    cfg = CheckpointConfig(budget_ms=5000)
    async with Checkpointer.from_url(private_server.url, config=cfg,
                                     registry=CollectorRegistry()) as cp:  # fmt: skip
        await cp.connect()
        await paused_writes(admin, 300)

        async def enter() -> None:
            async with cp.run(CTX, plan=PLAN):
                pass

        task = asyncio.create_task(enter())
        await asyncio.sleep(0.1)
        task.cancel()  # the acquire is in flight; it lands when the pause ends
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.5)
        assert await admin.exists(cp.manager(CTX).keys.lease) == 0
        async with cp.run(CTX, plan=PLAN) as again:  # not LeaseHeld
            assert again.confirmed


# --- 6. a step costs one round trip; a fenced-out attempt learns before producing --------------


async def test_a_step_in_plan_order_costs_one_round_trip(
    cp: Checkpointer, span_exporter: InMemorySpanExporter
) -> None:
    seen: list[str | None] = []
    mgr = cp.manager(CTX)
    async with cp.run(CTX, plan=PLAN) as run:
        for name in PLAN:

            async def produce(name: str = name) -> str:
                seen.append((await mgr.get_progress()).in_progress)
                return name

            await run.step(name, produce)
    assert seen == PLAN  # the progress shape still says what is in progress
    names = [s.name for s in span_exporter.get_finished_spans() if "get_progress" not in s.name]
    assert names == ["checkpoint.lease_acquire"] + ["checkpoint.save_section"] * 4 + [
        "checkpoint.cleanup"
    ]


async def test_a_taken_over_attempt_learns_it_before_paying_for_the_next_section(
    redis_client: aioredis.Redis, registry: CollectorRegistry
) -> None:
    cfg = CheckpointConfig(lease_ttl_seconds=1, budget_ms=1000)
    async with Checkpointer(redis_client, cfg, registry=registry) as cp:
        a = cp.run(CTX, plan=PLAN)
        await a.__aenter__()
        await a.step("summary", lambda: "s")  # its save marked data_analysis in progress
        assert a._renewer is not None
        a._renewer.cancel()
        await asyncio.sleep(1.2)
        b = cp.run(CTX, plan=PLAN)
        await b.acquire()
        produced: list[str] = []
        with pytest.raises(LeaseLost):
            await a.step("data_analysis", lambda: produced.append("x") or "late")
        assert produced == []
        await b.fail()


# --- 7. an exception in the block is never replaced --------------------------------------------


async def test_a_failed_release_never_replaces_the_users_exception(
    private_server: EmbeddedServer,
) -> None:
    registry = CollectorRegistry()
    cfg = CheckpointConfig(budget_ms=300, strict=True)
    async with Checkpointer.from_url(private_server.url, config=cfg, registry=registry) as cp:
        with pytest.raises(Crash):
            async with cp.run(CTX, plan=PLAN) as run:
                await run.step("summary", lambda: "s")
                private_server.stop()  # Redis goes away; then the agent fails
                raise Crash
    assert sample(registry, "lease_release", "error") == 1  # counted (and logged)
    assert registry.get_sample_value(
        "checkpoint_runs_finished_total", {"status": "failed"}
    ) == 1  # fmt: skip


async def test_strict_unreachable_acquire_still_raises(private_server: EmbeddedServer) -> None:
    cfg = CheckpointConfig(budget_ms=300, strict=True)
    private_server.stop()
    async with Checkpointer.from_url(private_server.url, config=cfg,
                                     registry=CollectorRegistry()) as cp:  # fmt: skip
        started = time.perf_counter()
        with pytest.raises(CheckpointUnavailable):
            async with cp.run(CTX, plan=PLAN):
                pass
        assert time.perf_counter() - started < 5


# --- 8. the async retry class on async clients ---------------------------------------------------


async def test_clients_we_build_use_the_async_retry(redis_url: str) -> None:
    client = build_client(redis_url.replace("redis+cluster://", "redis://"))
    try:
        retry = client.connection_pool.connection_kwargs["retry"]  # type: ignore[union-attr]
        assert isinstance(retry, redis.asyncio.retry.Retry)
    finally:
        await client.aclose()
