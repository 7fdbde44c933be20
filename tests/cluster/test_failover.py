"""A primary killed (SIGKILL) during a checkpoint workload: its replica is promoted and
checkpointing carries on by itself.

What must hold:
* every call returns within the budget (+ slack), during the outage too;
* checkpointing works again after a bounded number of failed calls, every one of them counted
  in the metrics (outcome error / timeout / skipped);
* no completed section is lost: every save confirmed before the kill (once the replica had
  acknowledged it: Redis replication is asynchronous, see docs/cluster.md) or after the
  promotion is readable afterwards;
* a run holding its lease across the failover keeps it, and finishes;
* the expiry watcher, subscribed on every primary and (as a standby) on every replica, counts
  the expiries on the promoted replica, each once, including those it performs at the very
  moment of its promotion (runs on the dead primary whose TTL ran out during the outage).

This test has a cluster of its own (node timeout 1 s, so failover takes ~2 s): it kills a node.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator

import pytest
from cluster_support import LocalCluster
from prometheus_client import CollectorRegistry

from sidecar import CheckpointConfig, Checkpointer, RunContext
from sidecar.server.cluster_watcher import ClusterExpiryWatcher

BUDGET_S = 0.25
SLACK_S = 0.5
OUTCOMES_FAILED = ("error", "timeout", "skipped")
SECTIONS = [f"s{i}" for i in range(6)]


@pytest.fixture
def failover_cluster(server_binary: str) -> Iterator[LocalCluster]:
    with LocalCluster(server_binary, node_timeout_ms=1000) as cluster:
        yield cluster


async def until(predicate: Callable[[], bool], what: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def runs_on(
    cluster: LocalCluster, cp: Checkpointer, port: int, stem: str, n: int
) -> list[RunContext]:
    """The first ``n`` runs ``<stem>-<i>`` whose keys the primary on ``port`` serves."""
    found = []
    for i in range(100 * n):
        ctx = RunContext(user_id="ttl" if stem != "held" else "agent", run_id=f"{stem}-{i}")
        if cluster.owner_port(cp.manager(ctx).keys.meta) == port:
            found.append(ctx)
            if len(found) == n:
                return found
    raise AssertionError(f"fewer than {n} {stem} runs on :{port}")


async def save_soon(cp: Checkpointer, ctx: RunContext, tries: int = 20) -> None:
    for _ in range(tries):
        if await cp.manager(ctx).save_section("s", 1):
            return
        await asyncio.sleep(0.1)
    pytest.fail("saves on the promoted primary never succeeded")


def failed_calls(registry: CollectorRegistry, operation: str, outcomes: tuple[str, ...]) -> int:
    return int(
        sum(
            registry.get_sample_value(
                "checkpoint_operation_duration_seconds_count",
                {"operation": operation, "outcome": outcome},
            )
            or 0
            for outcome in outcomes
        )
    )


@pytest.mark.slow
async def test_primary_killed_during_a_workload(failover_cluster: LocalCluster) -> None:
    cluster = failover_cluster
    registry = CollectorRegistry()
    cfg = CheckpointConfig(
        budget_ms=BUDGET_S * 1000, breaker_failures=5, breaker_cooldown_s=0.3, lease_ttl_seconds=30
    )
    watcher = ClusterExpiryWatcher(cluster.url, "ckpt", discovery_interval=1.0, health_interval=0.5)
    watching = asyncio.create_task(watcher.run())
    expiring = cfg.model_copy(update={"ttl_seconds": 1})
    async with (
        Checkpointer.from_url(cluster.url, config=cfg, registry=registry) as cp,
        Checkpointer.from_url(cluster.url, config=expiring, registry=CollectorRegistry()) as short,
    ):
        await until(watcher.state.ever_subscribed.is_set, "watcher never subscribed")
        ctxs = [RunContext(user_id="agent", run_id=f"report-{i}") for i in range(30)]
        owners = {c: cluster.owner_port(cp.manager(c).keys.meta) for c in ctxs}
        victim = owners[ctxs[0]]
        on_victim = [c for c in ctxs if owners[c] == victim]
        assert 3 <= len(on_victim) < len(ctxs)
        gap = runs_on(cluster, short, victim, "gap", 6)

        for section in SECTIONS[:2]:  # before the kill: every save confirmed
            for c in ctxs:
                assert await cp.manager(c).save_section(section, {"run": c.run_id})
        [held_ctx] = runs_on(cluster, cp, victim, "held", 1)
        held = cp.run(held_ctx, plan=["a", "b"])  # a run holding its lease across it all
        await held.__aenter__()
        await held.step("a", lambda: "a")

        doomed = [RunContext(user_id="ttl", run_id=f"before-{i}") for i in range(12)]
        for c in doomed:
            assert await short.manager(c).save_section("s", 1)
        await until(lambda: watcher.state.ttl_expiries == len(doomed), "expiries before")
        await until(
            lambda: (
                len(watcher.replicas) == 3
                and all(watcher.nodes[a].state.subscribed for a in watcher.replicas)
            ),
            "replicas not subscribed as standbys",
        )
        # TTL 1 s: they expire while their primary is dead (promotion takes > node timeout,
        # 1 s), so the promoted replica expires them the moment it is promoted
        for c in gap:
            assert await short.manager(c).save_section("s", 1)

        cluster.wait_caught_up(victim)  # asynchronous replication: see the module docstring
        cluster.kill(victim)
        killed_at = time.monotonic()

        failures = 0
        slowest = 0.0
        recovered_at: float | None = None
        for section in SECTIONS[2:]:
            for c in ctxs:
                while True:
                    started = time.perf_counter()
                    ok = await cp.manager(c).save_section(section, {"run": c.run_id})
                    slowest = max(slowest, time.perf_counter() - started)
                    if ok:
                        break
                    failures += 1
                    assert time.monotonic() - killed_at < 30, "checkpointing never came back"
                    await asyncio.sleep(0.05)
                if failures and recovered_at is None:
                    recovered_at = time.monotonic()
        promoted = cluster.wait_promoted(victim)
        outage = (recovered_at or killed_at) - killed_at

        await held.step("b", lambda: "b")  # the lease survived: the save is accepted
        await held.__aexit__(None, None, None)
        assert held.result()["success"] is True

        for c in ctxs:  # nothing confirmed is lost, on the failed-over shard or elsewhere
            loaded = await cp.manager(c).load_all_sections()
            assert loaded == {s: {"run": c.run_id} for s in SECTIONS}, c
        assert await cp.manager(held_ctx).has_checkpoints() is False  # run cleaned up

        await until(lambda: ("127.0.0.1", promoted) in watcher.primaries, "promoted unwatched")
        assert ("127.0.0.1", victim) not in watcher.primaries
        after = runs_on(cluster, short, promoted, "after", 6)
        for c in after:  # this client was idle: its first call learns the new topology
            await save_soon(short, c)
        total = len(doomed) + len(gap) + len(after)
        await until(lambda: watcher.state.ttl_expiries >= total, "expiries on the new primary")
        await asyncio.sleep(1.0)
        assert watcher.state.ttl_expiries == total  # each once
        assert watcher.state.lease_expiries == 0
    watching.cancel()
    await asyncio.gather(watching, return_exceptions=True)

    counted = failed_calls(registry, "save_section", OUTCOMES_FAILED)
    reached_network = failed_calls(registry, "save_section", ("error", "timeout"))
    print(
        f"\nfailover: primary :{victim} killed, replica :{promoted} promoted; "
        f"{failures} failed saves ({reached_network} reached the network), "
        f"checkpointing back after {outage:.2f} s; slowest call {slowest * 1000:.0f} ms"
    )
    assert failures > 0  # the kill was felt
    assert counted == failures  # every failed call is in the metrics
    # the breaker bounds what hits the dead node: its threshold, then one probe per cooldown
    assert reached_network <= cfg.breaker_failures + math.ceil(outage / 0.3) + 2
    assert slowest < BUDGET_S + SLACK_S
