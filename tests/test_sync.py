"""The sync API as threads use it: the budget against a frozen server, the pool after a
timeout, many threads on one SyncCheckpointer, and sync and async on the same runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from patience import answered
from prometheus_client import CollectorRegistry

from sidecar import (
    CheckpointConfig,
    Checkpointer,
    CheckpointFactory,
    CheckpointTimeout,
    LeaseHeld,
    RunContext,
    SyncCheckpointer,
    SyncCheckpointManager,
)
from sidecar.server.embedded import EmbeddedServer
from sidecar.sync.store import DEADLINE, build_sync_client

PLAN = ["summary", "data_analysis", "recommendations", "action_items"]
SLACK_S = 0.5  # a shared CI machine: what matters is that calls return, and soon


@pytest.fixture
def sync_cp(redis_server: EmbeddedServer) -> Iterator[SyncCheckpointer]:
    with redis.Redis.from_url(redis_server.url) as admin:
        admin.flushall()
    cfg = CheckpointConfig(budget_ms=1000)
    with SyncCheckpointer.from_url(
        redis_server.url, config=cfg, registry=CollectorRegistry()
    ) as cp:
        yield cp


def test_the_factory_makes_sync_managers(sync_cp: SyncCheckpointer) -> None:
    mgr = CheckpointFactory(sync_cp).create_for_context(RunContext(user_id="u", run_id="r"))
    assert isinstance(mgr, SyncCheckpointManager)
    assert mgr.save_section("summary", {"text": "s"}) is True
    assert mgr.load_section("summary") == {"text": "s"}


def test_a_frozen_server_ends_every_call_by_its_budget_and_the_pool_stays_aligned(
    private_server: EmbeddedServer,
) -> None:
    registry = CollectorRegistry()
    cfg = CheckpointConfig(budget_ms=150, breaker_failures=1000)
    ctxs = [RunContext(user_id="u", run_id=f"r{i}") for i in range(8)]
    with SyncCheckpointer.from_url(private_server.url, config=cfg, registry=registry) as cp:
        for i, ctx in enumerate(ctxs):
            for s in range(4):
                assert cp.manager(ctx).save_section(f"s{s}", {"run": i, "section": s})
        with ThreadPoolExecutor(8) as pool:  # several pooled connections, all in use at once
            list(pool.map(lambda c: cp.manager(c).load_all_sections(), ctxs * 4))
        private_server.pause()  # frozen mid-call: every thread's call is in flight
        try:

            def frozen_call(ctx: RunContext) -> tuple[bool, float]:
                started = time.perf_counter()
                saved = cp.manager(ctx).save_section("late", "written while frozen")
                return saved, time.perf_counter() - started

            with ThreadPoolExecutor(8) as pool:
                results = list(pool.map(frozen_call, ctxs))
        finally:
            private_server.resume()
        assert all(saved is False for saved, _ in results)  # not confirmed
        assert max(elapsed for _, elapsed in results) < 0.15 + SLACK_S
        # thawed: the late replies of those calls must never be read by later ones (same
        # client, so same pool; strict, so that a load that only ran out of budget is told
        # apart from wrong content, and tried again)
        checker = SyncCheckpointer(
            cp.store.client, CheckpointConfig(budget_ms=150, strict=True),
            registry=CollectorRegistry(),
        )  # fmt: skip
        mgrs = [checker.manager(ctx) for ctx in ctxs]

        def check(i: int) -> bool:
            run, section = i % 8, (i // 8) % 4
            got = answered(lambda: mgrs[run].load_section(f"s{section}"))
            return bool(got == {"run": run, "section": section})

        with ThreadPoolExecutor(8) as pool:
            assert all(pool.map(check, range(400)))
        strict = CheckpointConfig(budget_ms=150, strict=True)
        with SyncCheckpointer.from_url(private_server.url, config=strict,
                                       registry=CollectorRegistry()) as strict_cp:  # fmt: skip
            private_server.pause()
            try:
                with pytest.raises(CheckpointTimeout):
                    strict_cp.manager(ctxs[0]).load_all_sections()
            finally:
                private_server.resume()
    assert registry.get_sample_value(
        "checkpoint_operation_duration_seconds_count",
        {"operation": "save_section", "outcome": "timeout"},
    ) == 8  # fmt: skip


def test_32_threads_of_100_saves_and_8_threads_on_one_run(sync_cp: SyncCheckpointer) -> None:
    def own_run(t: int) -> list[bool]:
        mgr = sync_cp.manager(RunContext(user_id=f"user-{t}", run_id="run"))
        return [mgr.save_section(f"s{i}", {"thread": t, "i": i}) for i in range(100)]

    shared = sync_cp.manager(RunContext(user_id="shared", run_id="run"))

    def shared_run(t: int) -> list[bool]:
        return [shared.save_section(f"t{t}-{i}", {"thread": t, "i": i}) for i in range(25)]

    with ThreadPoolExecutor(40) as pool:
        own = [pool.submit(own_run, t) for t in range(32)]
        common = [pool.submit(shared_run, t) for t in range(8)]
        assert all(all(f.result()) for f in own + common)  # every save confirmed
    for t in range(32):
        mgr = sync_cp.manager(RunContext(user_id=f"user-{t}", run_id="run"))
        assert mgr.load_all_sections() == {f"s{i}": {"thread": t, "i": i} for i in range(100)}
        assert len(mgr.get_progress().completed_sections) == 100
    progress = shared.get_progress()
    assert len(progress.completed_sections) == 8 * 25  # no progress entry lost
    assert len(set(progress.completed_sections)) == 8 * 25
    assert shared.load_all_sections() == {
        f"t{t}-{i}": {"thread": t, "i": i} for t in range(8) for i in range(25)
    }


async def test_sync_and_async_share_runs(redis_server: EmbeddedServer) -> None:
    ctx = RunContext(user_id="both", run_id="r")
    cfg = CheckpointConfig(budget_ms=1000)
    async with Checkpointer.from_url(
        redis_server.url, config=cfg, registry=CollectorRegistry()
    ) as acp:
        await acp.manager(ctx).cleanup()
        with SyncCheckpointer.from_url(
            redis_server.url, config=cfg, registry=CollectorRegistry()
        ) as scp:
            async with acp.run(ctx, plan=PLAN) as arun:
                await arun.step("summary", lambda: "async summary")
                with pytest.raises(LeaseHeld):  # the same lease, from either API
                    scp.run(ctx, plan=PLAN).__enter__()
            assert scp.manager(ctx).load_all_sections() == {}  # completed: cleaned up
            with pytest.raises(RuntimeError):
                with scp.run(ctx, plan=PLAN) as srun:
                    srun.step("summary", lambda: "sync summary")
                    raise RuntimeError
            async with acp.run(ctx, plan=PLAN) as again:
                assert again.restored == {"summary": "sync summary"}
                assert again.fencing_token > srun.fencing_token


def test_lease_renewed_by_a_thread_that_stops_on_exit(redis_server: EmbeddedServer) -> None:
    registry = CollectorRegistry()
    cfg = CheckpointConfig(lease_ttl_seconds=1, budget_ms=1000)
    ctx = RunContext(user_id="renew", run_id="r")
    with SyncCheckpointer.from_url(redis_server.url, config=cfg, registry=registry) as cp:
        before = threading.active_count()
        with cp.run(ctx, plan=PLAN) as run:
            time.sleep(1.6)  # longer than the lease: the thread keeps it
            run.step("summary", lambda: "s")
            with pytest.raises(LeaseHeld):
                cp.run(ctx, plan=PLAN).__enter__()
        assert threading.active_count() == before  # the renewal thread is gone
    assert (registry.get_sample_value(
        "checkpoint_operation_duration_seconds_count",
        {"operation": "lease_renew", "outcome": "ok"},
    ) or 0) >= 2  # fmt: skip


def test_sync_breaker_skips_after_failures() -> None:
    from sidecar.server.embedded import free_port

    registry = CollectorRegistry()
    cfg = CheckpointConfig(budget_ms=200, breaker_failures=3, breaker_cooldown_s=30)
    url = f"redis://127.0.0.1:{free_port()}/0"
    with SyncCheckpointer.from_url(url, config=cfg, registry=registry) as cp:
        mgr = cp.manager(RunContext(user_id="u", run_id="r"))
        assert [mgr.has_checkpoints() for _ in range(6)] == [False] * 6
        assert registry.get_sample_value("checkpoint_circuit_open") == 1
    sample = registry.get_sample_value
    count = "checkpoint_operation_duration_seconds_count"
    assert sample(count, {"operation": "has_checkpoints", "outcome": "error"}) == 3
    assert sample(count, {"operation": "has_checkpoints", "outcome": "skipped"}) == 3


async def test_connect_opens_the_connections_asked_for(private_server: EmbeddedServer) -> None:
    """connect(connections=N) opens N pooled connections up front, in both APIs, so a burst
    of N calls pays no handshake inside its budget."""
    cfg = CheckpointConfig(budget_ms=1000)

    def clients() -> int:
        with redis.Redis.from_url(private_server.url) as admin:
            return int(admin.info("clients")["connected_clients"]) - 1  # not the admin's own

    with SyncCheckpointer.from_url(private_server.url, config=cfg,
                                   registry=CollectorRegistry()) as scp:  # fmt: skip
        scp.connect(connections=6)
        assert clients() == 6
    async with Checkpointer.from_url(private_server.url, config=cfg,
                                     registry=CollectorRegistry()) as acp:  # fmt: skip
        await acp.connect(connections=5)
        assert clients() == 5


def test_a_read_begun_after_the_budget_is_spent_drops_its_connection(
    redis_server: EmbeddedServer,
) -> None:
    client = build_sync_client(redis_server.url)
    try:
        conn = client.connection_pool.get_connection()
        DEADLINE.at = time.monotonic() + 5
        conn.send_command("PING")
        DEADLINE.at = time.monotonic() - 1  # spent between the send and the read
        with pytest.raises(redis.exceptions.TimeoutError):
            conn.read_response()
        assert conn._sock is None  # dropped: its PONG is never read as another command's reply
        client.connection_pool.release(conn)
    finally:
        DEADLINE.at = None
        client.close()
