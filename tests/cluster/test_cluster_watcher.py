"""The expiry watcher on a cluster: subscribed on every primary, and on every replica as a
standby; each expiry counted once, whatever primary owned the key."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from cluster_support import LocalCluster, WholeClusterClient
from prometheus_client import CollectorRegistry
from redis.crc import key_slot

from sidecar import CheckpointConfig, Checkpointer, RunContext
from sidecar.keys import run_keys
from sidecar.server.cluster_watcher import ClusterExpiryWatcher, node_url, parse_watchable


async def wait_for(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


@pytest.fixture
async def watcher(redis_cluster: LocalCluster) -> AsyncIterator[ClusterExpiryWatcher]:
    w = ClusterExpiryWatcher(redis_cluster.url, "wexp", discovery_interval=0.5, health_interval=0.5)
    task = asyncio.create_task(w.run())
    await wait_for(w.state.ever_subscribed.is_set, 10, "never subscribed")
    yield w
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_subscribed_on_the_primaries_and_the_replicas(
    redis_cluster: LocalCluster, watcher: ClusterExpiryWatcher
) -> None:
    primaries = redis_cluster.primary_ports()
    replicas = sorted(r for p in primaries for r in redis_cluster.replica_ports_of(p))
    assert [port for _, port in watcher.primaries] == primaries
    assert [port for _, port in watcher.replicas] == replicas and len(replicas) == 3
    await wait_for(
        lambda: all(w.state.subscribed for w in watcher.nodes.values()), 10, "replicas unsubscribed"
    )
    assert watcher.state.subscribed and watcher.state.up
    assert watcher.state.expiry_events == "confirmed"


async def test_each_expiry_is_counted_once_across_primaries(
    redis_cluster: LocalCluster,
    cluster_client: WholeClusterClient,
    watcher: ClusterExpiryWatcher,
) -> None:
    expiring = CheckpointConfig(key_prefix="wexp", ttl_seconds=1, budget_ms=2000)
    other = CheckpointConfig(key_prefix="other", ttl_seconds=1, budget_ms=2000)
    ctxs = [RunContext(user_id="u", run_id=f"r{i}") for i in range(30)]
    async with (
        Checkpointer(cluster_client, expiring, registry=CollectorRegistry()) as cp,
        Checkpointer(cluster_client, other, registry=CollectorRegistry()) as cp_other,
    ):
        for c in ctxs:
            assert await cp.manager(c).save_section("s", 1)
            assert await cp_other.manager(c).save_section("s", 1)  # another prefix: ignored
        cleaned = [RunContext(user_id="u", run_id=f"clean{i}") for i in range(5)]
        for c in cleaned:
            assert await cp.manager(c).save_section("s", 1)
            assert await cp.manager(c).cleanup()  # deleted, never expires
    owners = {redis_cluster.owner_port(cp.manager(c).keys.meta) for c in ctxs}
    assert len(owners) == 3  # the runs live on every primary
    await wait_for(lambda: watcher.state.ttl_expiries >= 30, 15, "expiries not all counted")
    await asyncio.sleep(1.0)  # replicas (subscribed too) and other prefixes must add nothing
    assert watcher.state.ttl_expiries == 30
    assert watcher.state.lease_expiries == 0


def test_node_url_and_primary_parsing() -> None:
    url = "rediss+cluster://agent:p%40ss@10.0.0.1:7000/0?ssl_ca_certs=/ca.crt"
    assert node_url(url, ("10.0.0.2", 7001)) == (
        "rediss://agent:p%40ss@10.0.0.2:7001/0?ssl_ca_certs=/ca.crt"
    )
    text = "\n".join([
        "a1 10.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460",
        "b2 10.0.0.2:7001@17001 master,fail - 0 0 2 disconnected 5461-10922",
        "c3 10.0.0.3:7002@17002 slave b2 0 0 2 connected",
        "d4 :7003@17003 master - 0 0 3 connected 10923-16383",
        "e5 10.0.0.5:0@0 master,noaddr - 0 0 4 disconnected",
    ])  # fmt: skip
    assert parse_watchable(text, "seed") == {
        ("10.0.0.1", 7000): True, ("10.0.0.3", 7002): False, ("seed", 7003): True,
    }  # fmt: skip


async def test_slots_moved_to_a_new_primary_are_watched_there(server_binary: str) -> None:
    """A primary joins and receives slots with their keys (resharding): the watcher subscribes
    on it and counts the expiries there, each once (MIGRATE deletes at the source, no event)."""
    moved_slots = 64
    with LocalCluster(server_binary, replicas=0) as cluster:
        source = cluster.primary_ports()[0]
        first = min(lo for n in cluster.topology() if n.port == source for lo, _ in n.slots)
        moving = [  # runs whose slot is among the source's lowest slots: reshard moves those
            c for i in range(60_000)
            if first <= key_slot(run_keys("mig", "u", f"r{i}").meta.encode()) < first + moved_slots
            and (c := RunContext(user_id="u", run_id=f"r{i}"))
        ][:8]  # fmt: skip
        staying = [RunContext(user_id="u", run_id=f"s{i}") for i in range(12)]
        assert len(moving) == 8
        w = ClusterExpiryWatcher(cluster.url, "mig", discovery_interval=0.5, health_interval=0.5)
        task = asyncio.create_task(w.run())
        try:
            await wait_for(w.state.ever_subscribed.is_set, 10, "never subscribed")
            slow = CheckpointConfig(key_prefix="mig", ttl_seconds=8, budget_ms=2000)
            async with Checkpointer.from_url(cluster.url, config=slow) as cp:
                for c in [*moving, *staying]:
                    assert await cp.manager(c).save_section("s", 1)
            newcomer = await asyncio.to_thread(cluster.add_primary)
            await asyncio.to_thread(cluster.reshard, source, newcomer, moved_slots)
            for c in moving:
                assert cluster.owner_port(run_keys("mig", "u", c.run_id).meta) == newcomer
            await wait_for(
                lambda: ("127.0.0.1", newcomer) in w.primaries, 10, "new primary not watched"
            )
            assert w.state.ttl_expiries == 0  # nothing expired yet: moved keys kept their TTL
            await wait_for(lambda: w.state.ttl_expiries >= 20, 20, "expiries not all counted")
            await asyncio.sleep(1.0)
            assert w.state.ttl_expiries == 20  # each once: the moves were deletions, not expiries
            assert w.state.lease_expiries == 0
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_a_node_loop_that_died_is_restarted_and_reported_meanwhile(
    redis_cluster: LocalCluster,
    cluster_client: WholeClusterClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug (any exception that is not a lost connection) kills one node's loop: while it is
    down the watcher says so (``failed``, not up, not counting, a reconnect counted); it is
    restarted with backoff and counts that node's expiries again."""
    w = ClusterExpiryWatcher(
        redis_cluster.url, "died", discovery_interval=0.5, health_interval=0.5,
        restart_initial=1.5,
    )  # fmt: skip
    task = asyncio.create_task(w.run())
    try:
        await wait_for(lambda: w.state.subscribed and w.state.up, 10, "never subscribed")
        address = w.primaries[0]
        node = w.nodes[address]
        ctx_keys = [
            k for i in range(200)
            if redis_cluster.owner_port((k := run_keys("died", "u", f"r{i}")).meta) == address[1]
        ][:2]  # fmt: skip
        original = node._pick

        def boom(key: bytes, evicted: bool) -> tuple[bytes, str] | None:
            monkeypatch.setattr(node, "_pick", original)  # once
            raise RuntimeError("injected bug")

        monkeypatch.setattr(node, "_pick", boom)
        reconnects = w.state.reconnects
        await cluster_client.set(ctx_keys[0].meta, b"x", px=1)
        await wait_for(lambda: w.state.failed is not None, 10, "the death not reported")
        assert "injected bug" in (w.state.failed or "")
        assert not w.state.up
        assert not w.state.counting
        await wait_for(lambda: w.state.failed is None and w.state.up, 10, "not restarted")
        assert w.state.reconnects == reconnects + 1  # the restarted loop's re-subscription
        await cluster_client.set(ctx_keys[1].meta, b"x", px=1)
        await wait_for(lambda: w.state.ttl_expiries == 1, 10, "the node's expiry not counted")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
