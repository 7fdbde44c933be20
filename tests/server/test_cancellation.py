"""A cancelled task stops, whenever the cancel lands: watchers, and agents saving checkpoints.

On Python 3.11, ``asyncio.wait_for`` drops a cancellation that arrives as the awaited work
finishes (fixed in 3.12), and redis-py wraps every send in ``wait_for`` when its client has a
socket timeout (its default: 5 s). Built that way, a watcher sometimes survived
``task.cancel()`` and kept running (3 of 3 tries hung within 42 cancellations), which would
leave the sidecar's shutdown waiting on it, and an agent task in a loop of saves survived its
cancel at the second try. The library's and the sidecar's clients now have no socket timeout
(the budget, or an ``asyncio.timeout``, bounds every command), and clean-up after a cancel is
shielded so that no socket is left open.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from cluster_support import LocalCluster

from sidecar import Checkpointer, RunContext
from sidecar.server.cluster_watcher import ClusterExpiryWatcher
from sidecar.server.embedded import EmbeddedServer
from sidecar.server.fleet import FleetWatcher
from sidecar.server.watcher import ExpiryWatcher

TRIES = 300


async def cancel_at_random_moments(
    make: Callable[[], ExpiryWatcher | ClusterExpiryWatcher | FleetWatcher],
    rng: random.Random,
    tries: int,
    within: float = 0.01,
) -> None:
    for i in range(tries):
        watcher = make()
        task = asyncio.create_task(watcher.run())
        await asyncio.sleep(rng.uniform(0, within))  # connecting, subscribing, or reading
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2.0)
        assert done, f"the watcher survived task.cancel() (try {i})"
        assert task.cancelled()


async def test_a_watcher_stops_whenever_it_is_cancelled(private_server: EmbeddedServer) -> None:
    await cancel_at_random_moments(
        lambda: ExpiryWatcher(private_server.url, "ckpt", health_interval=0.05),
        random.Random(1),
        TRIES,
    )


async def test_a_cluster_watcher_stops_whenever_it_is_cancelled(
    redis_cluster: LocalCluster,
) -> None:
    await cancel_at_random_moments(
        lambda: ClusterExpiryWatcher(redis_cluster.url, "ckpt", health_interval=0.05),
        random.Random(2),
        TRIES // 3,
    )


async def test_a_fleet_watcher_stops_whenever_it_is_cancelled(
    private_server: EmbeddedServer,
) -> None:
    """Electing, taking a slot, starting or stopping its watcher, handing the slot back."""
    await cancel_at_random_moments(
        lambda: FleetWatcher(private_server.url, "ckpt", health_interval=0.05, slot_ttl=0.2),
        random.Random(4),
        TRIES // 3,
        within=0.05,
    )


async def test_a_cluster_fleet_watcher_stops_whenever_it_is_cancelled(
    redis_cluster: LocalCluster,
) -> None:
    await cancel_at_random_moments(
        lambda: FleetWatcher(
            redis_cluster.url, "ckpt", cluster=True, health_interval=0.05, slot_ttl=0.2
        ),
        random.Random(5),
        TRIES // 10,
        within=0.1,
    )


async def test_an_agent_task_stops_whenever_it_is_cancelled(private_server: EmbeddedServer) -> None:
    """The same for an agent saving checkpoints: a cancelled task must end, and be cancelled
    (the library's clients have no socket_timeout, so redis-py never uses wait_for)."""
    rng = random.Random(3)
    async with Checkpointer.from_url(private_server.url) as cp:
        mgr = cp.manager(RunContext(user_id="u", run_id="r"))

        async def agent() -> None:
            while True:
                await mgr.save_section("s", "x" * 2000)

        for i in range(TRIES):
            task = asyncio.create_task(agent())
            await asyncio.sleep(rng.uniform(0, 0.005))
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=2.0)
            assert done and task.cancelled(), f"the agent survived task.cancel() (try {i})"
