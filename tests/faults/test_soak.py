"""The soak: 1,000 runs x 4 sections under random faults of every kind, seeded and repeatable.

Two servers take half the runs each: ``aof`` (AOF, fsync always) and ``none`` (no
persistence). The fault schedule is drawn from ``random.Random(SEED)`` (set
``SIDECAR_SOAK_SEED`` to replay another): server faults (crash + restart, SIGSTOP longer than
the budget, CLIENT KILL of every connection, out of memory) hit a server as given runs start;
run faults (the agent crashing after some sections, a worker dying while holding the lease
and writing late once another attempt took over, the run's data expiring between two sections)
hit given runs. Timing between concurrent tasks still varies, so the figures vary a little
from one execution to the next; the invariants below do not.

What must hold afterwards:
* every run completed with its four sections exactly once and each section's content its own,
  or is reported failed (none are, in practice);
* every save the library confirmed is restored by the next attempt, unless it was on the
  server without persistence when it crashed (reported as lost there) or expired by TTL;
  sections lost where persistence was on: 0;
* no late write of a dead worker is ever accepted;
* every operation is counted in the metrics: saves attempted == saves counted, confirmed ==
  counted ok.
The summary (faults injected, operations attempted and failed, sections lost) is printed at
the end of the pytest run.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from sidecar import (
    CheckpointConfig,
    Checkpointer,
    CheckpointEvent,
    LeaseHeld,
    LeaseLost,
    ResumableRun,
    RunContext,
)

from .conftest import ServerFactory
from .inject import SUMMARIES, Faulty

SEED = int(os.environ.get("SIDECAR_SOAK_SEED", "20261128"))
RUNS = 1000
PLAN = ["summary", "data_analysis", "recommendations", "action_items"]
WORKERS = 40
SERVER_FAULT_RATE = 0.04  # per run start
RUN_FAULT_RATE = 0.06  # per run
RUN_DEADLINE_S = 30.0
SOAK_DEADLINE_S = 180.0  # the whole soak takes 10-20 s; past this, fail with every task's stack
SERVER_FAULTS = ("crash", "freeze", "client_kill", "oom")
RUN_FAULTS = ("agent_crash", "worker_dies_holding_lease", "ttl_expiry")


class Crash(Exception):
    """The agent fails mid-run (its checkpoints stay for the next attempt)."""


class NotApplied(Crash):
    """The run fault could not happen in this attempt (an outage): the next attempt tries it."""


@dataclass
class Ledger:
    """What the test knows independently of the library's own metrics."""

    confirmed: dict[str, set[str]] = field(default_factory=dict)  # run -> sections confirmed
    expired: dict[str, set[str]] = field(default_factory=dict)
    produced: Counter[str] = field(default_factory=Counter)  # sections produced
    # produced while the run held no confirmed lease (its acquire met an outage): never saved
    produced_unconfirmed: int = 0
    zombie_produced: int = 0  # late sections a dead worker produced (then tried to save)
    lost: Counter[str] = field(default_factory=Counter)  # per server kind
    restored: int = 0
    completed: int = 0
    failed: list[str] = field(default_factory=list)
    fenced: int = 0
    zombie_accepted: int = 0
    zombie_unconfirmed: int = 0
    wrong_content: int = 0
    lease_waits: int = 0
    run_faults: Counter[str] = field(default_factory=Counter)

    def on_event(self, event: CheckpointEvent) -> None:
        if event.kind == "saved" and event.section is not None:
            self.confirmed.setdefault(event.run_id, set()).add(event.section)


def task_stacks() -> list[str]:
    """Where every pending task of the loop is waiting, one line per frame."""
    lines = []
    for task in asyncio.all_tasks():
        frames = task.get_stack(limit=6)
        where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(frames))
        lines.append(f"{task.get_name()}: {where}")
    return sorted(lines)


def content(run_id: str, section: str, *, late: bool = False) -> dict[str, Any]:
    return {"run": run_id, "section": section, **({"late": True} if late else {})}


class Soak:
    def __init__(self, servers: dict[str, Faulty], rng: random.Random) -> None:
        self.servers = servers
        self.rng = rng
        self.ledger = Ledger()
        self.registry = CollectorRegistry()
        cfg = CheckpointConfig(
            budget_ms=200, breaker_failures=5, breaker_cooldown_s=0.2, lease_ttl_seconds=1,
            ttl_seconds=600,
        )  # fmt: skip
        self.cps = {
            kind: Checkpointer.from_url(
                s.url, config=cfg, registry=self.registry, on_event=self.ledger.on_event
            )
            for kind, s in servers.items()
        }
        self.admin = {kind: aioredis.Redis.from_url(s.url) for kind, s in servers.items()}
        kinds = sorted(servers)
        self.plan: list[tuple[str, str | None, tuple[str, str] | None]] = []
        for i in range(RUNS):
            run_fault = rng.choice(RUN_FAULTS) if rng.random() < RUN_FAULT_RATE else None
            server_fault = None
            if rng.random() < SERVER_FAULT_RATE:
                server_fault = (rng.choice(kinds), rng.choice(SERVER_FAULTS))
            self.plan.append((kinds[i % 2], run_fault, server_fault))
        self.server_faults: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.injector_errors: list[str] = []

    # --- server faults: one at a time, in schedule order -----------------------------------

    async def inject_forever(self) -> None:
        """Inject faults as scheduled. A fault that fails is recorded, never fatal: a dead
        injector would leave a server down (or starved) for good and ``join()`` waiting."""
        while True:
            kind, fault = await self.server_faults.get()
            try:
                await self.inject(self.servers[kind], fault)
            except Exception as exc:
                self.injector_errors.append(f"{kind}/{fault}: {exc!r}")
                await self.heal(self.servers[kind])
            finally:
                self.server_faults.task_done()

    async def inject(self, server: Faulty, fault: str) -> None:
        if fault == "crash":
            server.crash()
            await asyncio.sleep(self.rng.uniform(0.1, 0.4))
            await asyncio.to_thread(server.restart)
        elif fault == "freeze":
            server.freeze()
            await asyncio.sleep(self.rng.uniform(0.3, 0.6))  # > budget (0.2 s)
            server.thaw()
        elif fault == "client_kill":
            await asyncio.to_thread(server.kill_clients)
        else:
            await asyncio.to_thread(server.starve)
            await asyncio.sleep(self.rng.uniform(0.1, 0.3))
            await asyncio.to_thread(server.feed)
        await asyncio.sleep(0.05)

    async def heal(self, server: Faulty) -> None:
        """Undo whatever a failed injection left behind, so the runs can go on."""
        server.thaw()
        for _ in range(3):
            try:
                if server.down:
                    await asyncio.to_thread(server.restart)
                await asyncio.to_thread(server.feed)
                return
            except Exception as exc:
                self.injector_errors.append(f"healing: {exc!r}")
                await asyncio.sleep(0.5)

    # --- one run ---------------------------------------------------------------------------

    async def run_one(self, i: int) -> None:
        kind, run_fault, server_fault = self.plan[i]
        if server_fault is not None:
            self.server_faults.put_nowait(server_fault)
        ctx = RunContext(user_id="soak", run_id=f"run-{i:04d}")
        if run_fault:
            self.ledger.run_faults[run_fault] += 1
        deadline = time.monotonic() + RUN_DEADLINE_S
        pending = run_fault  # until it has happened: an outage can keep it from happening
        zombie: ResumableRun | None = None
        while time.monotonic() < deadline:
            try:
                outcome = await self.attempt(kind, ctx, pending, zombie)
            except LeaseHeld:
                self.ledger.lease_waits += 1
                await asyncio.sleep(0.2)
                continue
            except NotApplied:
                await asyncio.sleep(0.05)
                continue
            except (Crash, LeaseLost):
                pending = None
                await asyncio.sleep(0.05)
                continue
            if isinstance(outcome, ResumableRun):  # a worker died holding the lease
                zombie, pending = outcome, None
                continue
            return
        self.ledger.failed.append(ctx.run_id)

    async def attempt(
        self, kind: str, ctx: RunContext, fault: str | None, zombie: ResumableRun | None
    ) -> ResumableRun | None:
        cp, ledger = self.cps[kind], self.ledger
        run = await cp.run(ctx, plan=PLAN).__aenter__()
        try:
            if run.fencing_token:  # the lease was taken: what was confirmed must be restored
                expected = ledger.confirmed.get(ctx.run_id, set()) - ledger.expired.get(
                    ctx.run_id, set()
                )
                missing = expected - set(run.restored)
                ledger.lost[kind] += len(missing)
                ledger.confirmed[ctx.run_id] = expected - missing
                ledger.restored += len(run.restored)
            if zombie is not None:
                if not run.fencing_token:  # started without the lease (outage): try again
                    raise NotApplied
                await self.zombie_writes(cp, ctx, zombie)
            for k, name in enumerate(PLAN):
                if fault == "ttl_expiry" and k == 2:
                    await self.expire(kind, cp, ctx)
                if fault == "worker_dies_holding_lease" and k == 2:
                    if run._renewer is None:  # it never got the lease (outage): next attempt
                        raise NotApplied
                    run._renewer.cancel()  # the process is gone: no renewal, no release
                    return run

                def produce(name: str = name) -> dict[str, Any]:
                    ledger.produced[kind] += 1
                    ledger.produced_unconfirmed += not run.confirmed
                    return content(ctx.run_id, name)

                await run.step(name, produce)
                if fault == "agent_crash" and k == 1:
                    raise Crash
        except BaseException as exc:
            await run.__aexit__(type(exc), exc, None)
            raise
        await run.__aexit__(None, None, None)
        result = run.result()
        ok = result["success"] and list(result["report"]) == PLAN
        if ok and all(v == content(ctx.run_id, n) for n, v in result["report"].items()):
            ledger.completed += 1
        else:
            ledger.wrong_content += 1
        return None

    async def zombie_writes(self, cp: Checkpointer, ctx: RunContext, zombie: ResumableRun) -> None:
        """The dead worker wakes up after the takeover and writes: fencing must refuse it."""
        if zombie.lease_lost:  # already fenced out by an earlier attempt of this run
            return

        def late() -> dict[str, Any]:
            self.ledger.zombie_produced += 1  # refused before producing is better still
            return content(ctx.run_id, PLAN[3], late=True)

        try:
            await zombie.step(PLAN[3], late)
        except LeaseLost:
            self.ledger.fenced += 1
            return
        stored = await cp.manager(ctx).load_section(PLAN[3])
        if stored == content(ctx.run_id, PLAN[3], late=True):
            self.ledger.zombie_accepted += 1
        else:
            self.ledger.zombie_unconfirmed += 1  # an outage answered first: nothing written

    async def expire(self, kind: str, cp: Checkpointer, ctx: RunContext) -> None:
        """The run's data expires now (PEXPIRE 1 ms), between two sections of a live run."""
        keys = cp.manager(ctx).keys
        try:
            async with asyncio.timeout(1.0):
                await self.admin[kind].pexpire(keys.sections, 1)
                await self.admin[kind].pexpire(keys.meta, 1)
        except Exception:
            return
        self.ledger.expired.setdefault(ctx.run_id, set()).update(
            self.ledger.confirmed.get(ctx.run_id, set())
        )

    async def main(self) -> None:
        injector = asyncio.create_task(self.inject_forever())
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(RUNS):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                await self.run_one(queue.get_nowait())

        async def work() -> None:
            await asyncio.gather(*(worker() for _ in range(WORKERS)))
            await self.server_faults.join()  # let scheduled faults finish

        job = asyncio.ensure_future(work())
        try:
            done, _ = await asyncio.wait({job}, timeout=SOAK_DEADLINE_S)
            if not done:  # say where it is stuck (pytest-timeout would only show the loop)
                stuck = "\n".join(task_stacks())
                job.cancel()
                await asyncio.gather(job, return_exceptions=True)
                pytest.fail(f"soak stuck past {SOAK_DEADLINE_S:g} s; injector errors: "
                            f"{self.injector_errors}; tasks:\n{stuck}")  # fmt: skip
            await job
        finally:
            injector.cancel()
            await asyncio.gather(injector, return_exceptions=True)
            for server in self.servers.values():
                server.thaw()
                if server.down:
                    server.restart()
            for cp in self.cps.values():
                await cp.aclose()
            for admin in self.admin.values():
                await admin.aclose()

    def metric(self, operation: str | None, outcomes: tuple[str, ...]) -> int:
        total = 0.0
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name != "checkpoint_operation_duration_seconds_count":
                    continue
                if operation is not None and sample.labels["operation"] != operation:
                    continue
                if sample.labels["outcome"] in outcomes:
                    total += sample.value
        return int(total)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_soak_1000_runs_under_random_faults(faulty_server: ServerFactory) -> None:
    servers = {"aof": faulty_server(persistent=True), "none": faulty_server(persistent=False)}
    soak = Soak(servers, random.Random(SEED))
    started = time.monotonic()
    await soak.main()
    elapsed = time.monotonic() - started
    ledger = soak.ledger
    all_outcomes = ("ok", "error", "timeout", "skipped", "rejected")
    attempted = soak.metric(None, all_outcomes)
    failed = soak.metric(None, ("error", "timeout", "skipped"))
    faults = Counter[str]()
    for server in servers.values():
        faults.update(server.injected)
    faults.update(ledger.run_faults)
    summary = [
        f"soak seed={SEED}: {RUNS} runs x {len(PLAN)} sections, {WORKERS} concurrent agents, "
        f"{elapsed:.1f} s",
        "  faults injected: "
        + ", ".join(f"{k}={v}" for k, v in sorted(faults.items()))
        + f" (total {sum(faults.values())})",
        f"  operations attempted: {attempted} (metrics); failed: {failed} "
        f"(error={soak.metric(None, ('error',))}, timeout={soak.metric(None, ('timeout',))}, "
        f"skipped={soak.metric(None, ('skipped',))}); rejected (fencing): "
        f"{soak.metric(None, ('rejected',))}",
        f"  runs completed: {ledger.completed}; reported failed: {len(ledger.failed)}; "
        f"wrong content: {ledger.wrong_content}",
        f"  sections restored on resume: {ledger.restored}; produced: "
        f"{sum(ledger.produced.values())} ({ledger.produced_unconfirmed} by unconfirmed runs, "
        f"not saved); lost with AOF: {ledger.lost['aof']}; lost without "
        f"persistence: {ledger.lost['none']} (reported: produced again)",
        f"  late writes of dead workers: fenced {ledger.fenced}, accepted "
        f"{ledger.zombie_accepted}, not confirmed (outage) {ledger.zombie_unconfirmed}; "
        f"lease waits: {ledger.lease_waits}",
    ]
    SUMMARIES.append("\n".join(summary))
    print("\n" + "\n".join(summary))

    assert not soak.injector_errors, soak.injector_errors
    assert ledger.completed + len(ledger.failed) == RUNS
    assert ledger.wrong_content == 0
    assert not ledger.failed, ledger.failed[:10]
    assert ledger.lost["aof"] == 0
    assert ledger.zombie_accepted == 0
    assert ledger.fenced > 0
    assert sum(faults[k] for k in SERVER_FAULTS) >= 10
    saves = soak.metric("save_section", all_outcomes)
    zombie_saves = ledger.zombie_produced
    # every save is counted, and a run that never confirmed its lease saved nothing
    expected = sum(ledger.produced.values()) - ledger.produced_unconfirmed + zombie_saves
    assert saves == expected
    confirmed_events = soak.metric("save_section", ("ok",))
    assert confirmed_events > 0 and failed > 0
