"""Fault scenarios against a real server, one per kind. Each docstring says what must hold.

Budget bounds are checked with generous slack (shared CI machines): what matters is that a call
returns at all, and soon, while Redis is broken.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from sidecar import (
    CheckpointConfig,
    Checkpointer,
    CheckpointUnavailable,
    LeaseHeld,
    Progress,
    RunContext,
)

from .conftest import ServerFactory
from .inject import raw

CTX = RunContext(user_id="agent", run_id="report-1")
PLAN = ["s0", "s1", "s2", "s3"]
SLACK_S = 0.4
FAILED = ("error", "timeout", "skipped")


class Crash(Exception):
    """The agent itself fails: the attempt ends, its checkpoints stay for the next one."""


def count(registry: CollectorRegistry, operation: str, outcomes: tuple[str, ...] = FAILED) -> int:
    return int(
        sum(
            registry.get_sample_value(
                "checkpoint_operation_duration_seconds_count",
                {"operation": operation, "outcome": o},
            )
            or 0
            for o in outcomes
        )
    )


class Agent:
    """Produces sections, remembering which it had to produce (so what was not restored)."""

    def __init__(self) -> None:
        self.produced: list[str] = []

    def producer(self, name: str) -> Any:
        def produce() -> str:
            self.produced.append(name)
            return f"{name} body"

        return produce


async def timed(call: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = await call
    return result, time.perf_counter() - started


@pytest.mark.parametrize("persistent", [True, False], ids=["aof", "no-persistence"])
async def test_redis_stopped_mid_run_and_restarted(
    faulty_server: ServerFactory, persistent: bool
) -> None:
    """The agent never blocks past the budget, failures are counted, checkpointing resumes by
    itself after the restart; with AOF nothing completed is lost; without persistence the loss
    is reported (progress and resume find nothing of it), never hidden."""
    server = faulty_server(persistent=persistent)
    registry = CollectorRegistry()
    cfg = CheckpointConfig(budget_ms=100, breaker_failures=3, breaker_cooldown_s=0.2)
    agent = Agent()
    async with Checkpointer.from_url(server.url, config=cfg, registry=registry) as cp:
        mgr = cp.manager(CTX)
        with pytest.raises(Crash):
            async with cp.run(CTX, plan=PLAN) as run:
                for name in ("s0", "s1"):
                    await run.step(name, agent.producer(name))
                server.crash()
                _, elapsed = await timed(run.step("s2", agent.producer("s2")))
                assert elapsed < 2 * (0.1 + SLACK_S)  # mark + save, each within budget
                for _ in range(5):
                    result, elapsed = await timed(mgr.has_checkpoints())
                    assert result is False and elapsed < 0.1 + SLACK_S
                server.restart()
                await asyncio.sleep(0.3)  # the breaker's cooldown; nobody intervenes
                if not persistent:
                    assert await mgr.get_progress() == Progress()  # the loss is visible
                await run.step("s3", agent.producer("s3"))
                assert await mgr.load_section("s3") == "s3 body"  # checkpointing is back
                raise Crash
        assert count(registry, "save_section") == 1  # s2, the one save made while down
        assert count(registry, "has_checkpoints") == 5
        assert count(registry, "save_section", ("ok",)) == 3

        async with cp.run(CTX, plan=PLAN) as again:
            for name in PLAN:
                await again.step(name, agent.producer(name))
        result = again.result()
    assert result["success"] is True
    assert list(result["report"]) == PLAN
    if persistent:
        assert again.restored == {n: f"{n} body" for n in ("s0", "s1", "s3")}
        assert agent.produced == ["s0", "s1", "s2", "s3", "s2"]  # only s2 produced twice
    else:
        assert again.restored == {"s3": "s3 body"}  # what the restart wiped is produced again
        assert result["resumed_sections"] == 1
        assert agent.produced == ["s0", "s1", "s2", "s3", "s0", "s1", "s2"]


async def test_redis_frozen_longer_than_the_budget(faulty_server: ServerFactory) -> None:
    """SIGSTOP for 1 s (10 budgets): every call gives up within the budget, counted as timeouts;
    after SIGCONT checkpointing resumes by itself; whatever landed is whole (a save that timed
    out may still land later, atomically: sections and progress always agree)."""
    server = faulty_server()
    registry = CollectorRegistry()
    cfg = CheckpointConfig(budget_ms=100, breaker_failures=1000)
    async with Checkpointer.from_url(server.url, config=cfg, registry=registry) as cp:
        mgr = cp.manager(CTX)
        assert await mgr.save_section("s0", 0)
        server.freeze()
        frozen_at = time.monotonic()
        attempts = 0
        while time.monotonic() - frozen_at < 1.0:
            result, elapsed = await timed(mgr.save_section(f"s{attempts + 1}", attempts + 1))
            assert result is False and elapsed < 0.1 + SLACK_S, elapsed
            attempts += 1
        server.thaw()
        assert attempts >= 3
        assert count(registry, "save_section", ("timeout",)) == attempts
        assert registry.get_sample_value(
            "checkpoint_budget_exceeded_total", {"operation": "save_section"}
        ) == attempts  # fmt: skip
        assert await mgr.save_section("after", "thaw")  # by itself, no reconnect call
        loaded = await mgr.load_all_sections()
        progress = await mgr.get_progress()
    assert {"s0", "after"} <= set(loaded)
    assert set(progress.completed_sections) == set(loaded)  # no section without progress
    assert all(loaded[name] == int(name[1:]) for name in loaded if name != "after")


async def test_connection_killed_mid_command(faulty_server: ServerFactory) -> None:
    """CLIENT KILL while a save waits inside the server (held by CLIENT PAUSE WRITE): the save
    fails cleanly, counted as an error; nothing of it is written; the next call reconnects."""
    server = faulty_server()
    registry = CollectorRegistry()
    cfg = CheckpointConfig(budget_ms=1000, breaker_failures=1000)
    async with Checkpointer.from_url(server.url, config=cfg, registry=registry) as cp:
        mgr = cp.manager(CTX)
        assert await mgr.save_section("s0", 0)
        raw(server.port, "CLIENT", "PAUSE", 5000, "WRITE")
        try:
            pending = asyncio.create_task(mgr.save_section("s1", 1))
            await asyncio.sleep(0.2)
            assert not pending.done()  # the command is in the server, waiting
            assert server.kill_clients() >= 1
        finally:
            raw(server.port, "CLIENT", "UNPAUSE")
        assert await pending is False
        assert count(registry, "save_section", ("error",)) == 1
        assert await mgr.load_all_sections() == {"s0": 0}
        assert (await mgr.get_progress()).completed_sections == ["s0"]
        assert await mgr.save_section("s1", 1)


async def test_out_of_memory_with_noeviction(faulty_server: ServerFactory) -> None:
    """maxmemory below what the server holds, noeviction: saves fail with a counted error
    naming OOM, nothing partial is written (sections, progress, lease unchanged), reads keep
    working, and saves work again once memory is back."""
    server = faulty_server()
    registry = CollectorRegistry()
    cfg = CheckpointConfig(budget_ms=1000, breaker_failures=1000)
    client = aioredis.Redis.from_url(server.url)
    async with Checkpointer.from_url(server.url, config=cfg, registry=registry) as cp:
        mgr = cp.manager(CTX)
        assert await mgr.save_section("s0", "zero")
        before = {k: await client.dump(k) for k in await client.keys("*")}
        server.starve()
        try:
            assert await mgr.save_section("s1", "x" * 10_000) is False
            strict = CheckpointConfig(budget_ms=1000, strict=True)
            async with Checkpointer.from_url(server.url, config=strict) as strict_cp:
                with pytest.raises(CheckpointUnavailable, match=r"refused the command \(OOM\)"):
                    await strict_cp.manager(CTX).save_section("s1", "one")
            with pytest.raises(Crash):
                async with cp.run(CTX, plan=PLAN) as run:  # the lease cannot be taken either
                    assert run.restored == {}  # best effort: the run goes on without
                    await run.step("s1", lambda: "one")
                    raise Crash  # (a completed run would clean up: UNLINK works under OOM)
            after = {k: await client.dump(k) for k in await client.keys("*")}
            assert after == before  # not one field written
            assert await mgr.load_all_sections() == {"s0": "zero"}  # reads still work
            assert (await mgr.get_progress()).completed_sections == ["s0"]
            assert await mgr.get_checkpoint_age() is not None
        finally:
            server.feed()
        assert count(registry, "save_section", ("error",)) == 1  # ours; strict_cp has its own
        # the run never held the lease: it tried again before its step, and saved nothing
        assert count(registry, "lease_acquire", ("error",)) == 2
        assert await mgr.save_section("s1", "one")
        assert (await mgr.get_progress()).completed_sections == ["s0", "s1"]
    await client.aclose()


async def test_eviction_policy_what_can_vanish(faulty_server: ServerFactory) -> None:
    """With allkeys-lru (or any volatile-* policy: every key of ours has a TTL) the server
    evicts single keys, not runs: a run can lose its sections but keep its progress, or the
    reverse, or lose its lease. What holds: every section still there is whole and correct,
    and the library reports what it finds (see docs/faults.md for the figures)."""
    server = faulty_server(extra_args=("--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru"))
    cfg = CheckpointConfig(budget_ms=2000)
    ctxs = [RunContext(user_id="u", run_id=f"r{i}") for i in range(300)]
    body = "x" * 8_000
    async with Checkpointer.from_url(server.url, config=cfg, registry=CollectorRegistry()) as cp:
        for c in ctxs:
            for name in ("s0", "s1"):
                assert await cp.manager(c).save_section(name, {"run": c.run_id, "b": body})
        kinds = {"whole": 0, "sections without progress": 0, "progress without sections": 0,
                 "gone": 0}  # fmt: skip
        for c in ctxs:
            mgr = cp.manager(c)
            loaded = await mgr.load_all_sections()
            progress = await mgr.get_progress()
            assert all(v == {"run": c.run_id, "b": body} for v in loaded.values())
            if loaded and progress.completed_sections:
                assert set(progress.completed_sections) == set(loaded)
                kinds["whole"] += 1
            elif loaded:
                kinds["sections without progress"] += 1
            elif progress.completed_sections:
                kinds["progress without sections"] += 1
            else:
                kinds["gone"] += 1
    evicted = int(server.info("evicted_keys"))
    print(f"\nallkeys-lru, 4 MB, 300 runs x 2 sections of 8 KB: {evicted} keys evicted; {kinds}")
    assert evicted > 0
    assert kinds["whole"] < len(ctxs)


async def test_ttl_expiring_between_two_sections_of_a_live_run(
    faulty_server: ServerFactory,
) -> None:
    """The run's data expires between two sections (the lease does not): the run goes on and
    saves the next sections; a later attempt resumes what is there and produces the rest, so
    what expired is produced again, visibly (resumed_sections), never restored half."""
    server = faulty_server()
    cfg = CheckpointConfig(ttl_seconds=1, lease_ttl_seconds=30, budget_ms=1000)
    agent = Agent()
    async with Checkpointer.from_url(server.url, config=cfg, registry=CollectorRegistry()) as cp:
        with pytest.raises(Crash):
            async with cp.run(CTX, plan=PLAN) as run:
                await run.step("s0", agent.producer("s0"))
                await asyncio.sleep(1.3)
                assert await cp.manager(CTX).has_checkpoints() is False
                await run.step("s1", agent.producer("s1"))
                raise Crash
        async with cp.run(CTX, plan=PLAN) as again:
            for name in PLAN:
                await again.step(name, agent.producer(name))
    assert again.restored == {"s1": "s1 body"}
    assert again.result()["resumed_sections"] == 1
    assert agent.produced == ["s0", "s1", "s0", "s2", "s3"]


def start_worker(url: str, tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    with (tmp_path / "worker.err").open("w") as err:
        worker = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("worker.py")), url, CTX.user_id,
             CTX.run_id],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
        )  # fmt: skip
    assert worker.stdout is not None
    line = worker.stdout.readline().split()
    assert line[:1] == ["holding"], line
    return worker, int(line[1])


@pytest.mark.parametrize("how", ["paused", "killed"])
async def test_worker_crashing_while_holding_the_lease(
    faulty_server: ServerFactory, tmp_path: Path, how: str
) -> None:
    """Another worker process holds the run and stops (SIGSTOP, or SIGKILL): the next attempt is
    refused while the lease lives, gets it after lease_ttl_seconds, resumes the dead worker's
    section; a paused worker resumed afterwards has its late write rejected by fencing."""
    server = faulty_server()
    worker, worker_token = start_worker(server.url, tmp_path)
    cfg = CheckpointConfig(lease_ttl_seconds=1, budget_ms=1000)
    try:
        if how == "paused":
            worker.send_signal(19)  # SIGSTOP: a stalled process, its renewal stops with it
        else:
            worker.kill()
            worker.wait()
        stopped_at = time.monotonic()
        async with Checkpointer.from_url(
            server.url, config=cfg, registry=CollectorRegistry()
        ) as cp:
            with pytest.raises(LeaseHeld):
                async with cp.run(CTX, plan=PLAN):
                    pass
            while True:
                try:
                    run = await cp.run(CTX, plan=PLAN).__aenter__()
                    break
                except LeaseHeld:
                    assert time.monotonic() - stopped_at < 5, "the lease never expired"
                    await asyncio.sleep(0.1)
            waited = time.monotonic() - stopped_at
            assert 0.5 < waited < 1.0 + 2.0  # about lease_ttl_seconds (the renewal was <1 s ago)
            assert run.fencing_token > worker_token
            assert run.restored == {"s0": "worker s0"}
            if how == "paused":
                worker.send_signal(18)  # SIGCONT: the stalled worker wakes up and writes
                assert worker.stdin is not None and worker.stdout is not None
                worker.stdin.write("go\n")
                worker.stdin.flush()
                assert worker.stdout.readline().strip() == "fenced"
                assert worker.wait(10) == 3
            for name in PLAN:
                await run.step(name, lambda name=name: f"new {name}")
            assert await cp.manager(CTX).load_section("s1") == "new s1"
            await run.__aexit__(None, None, None)
            assert run.result()["success"] is True
            assert run.result()["report"]["s0"] == "worker s0"
    finally:
        if worker.poll() is None:
            worker.send_signal(18)
            worker.kill()
            worker.wait()
        for pipe in (worker.stdin, worker.stdout):
            if pipe is not None:
                pipe.close()
