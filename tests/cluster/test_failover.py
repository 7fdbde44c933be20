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
* the expiry watcher, subscribed on every primary, subscribes on the promoted replica and
  counts the expiries there, each once.

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

        for section in SECTIONS[:2]:  # before the kill: every save confirmed
            for c in ctxs:
                assert await cp.manager(c).save_section(section, {"run": c.run_id})
        held_ctx = next(
            c for i in range(1000)
            if owners.get(c := RunContext(user_id="agent", run_id=f"held-{i}")) is None
            and cluster.owner_port(cp.manager(c).keys.meta) == victim
        )  # fmt: skip
        held = cp.run(held_ctx, plan=["a", "b"])  # a run holding its lease across it all
        await held.__aenter__()
        await held.step("a", lambda: "a")

        doomed = [RunContext(user_id="ttl", run_id=f"before-{i}") for i in range(12)]
        for c in doomed:
            assert await short.manager(c).save_section("s", 1)
        await until(lambda: watcher.state.ttl_expiries == len(doomed), "expiries before")

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
        after = [
            c for i in range(200)
            if cluster.owner_port(short.manager(c := RunContext(user_id="ttl", run_id=f"after-{i}")).keys.meta) == promoted
        ][:6]  # fmt: skip
        for c in after:  # this client was idle: its first call learns the new topology
            for _ in range(20):
                if await short.manager(c).save_section("s", 1):
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("saves on the promoted primary never succeeded")
        total = len(doomed) + len(after)
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
