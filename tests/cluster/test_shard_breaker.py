"""One shard frozen: its runs' calls are skipped by its own breaker, the other shards' are not.

With one breaker per Checkpointer, a primary that stops answering would open the circuit for
every run, and runs on healthy shards would lose their checkpoints for a cooldown too. The
breaker is per shard (the primary serving the run's slot), so they carry on.

The frozen node (SIGSTOP) stays frozen well under the session cluster's node timeout (5 s):
no failover happens, the shard simply answers nothing for a while.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time

from cluster_support import LocalCluster
from patience import answered_async
from prometheus_client import CollectorRegistry

from sidecar import CheckpointConfig, Checkpointer, RunContext

COOLDOWN_S = 1.0


def count(registry: CollectorRegistry, outcome: str) -> float:
    return (
        registry.get_sample_value(
            "checkpoint_operation_duration_seconds_count",
            {"operation": "save_section", "outcome": outcome},
        )
        or 0.0
    )


async def test_a_frozen_shard_does_not_skip_calls_to_healthy_shards(
    redis_cluster: LocalCluster,
) -> None:
    redis_cluster.flushall()
    registry = CollectorRegistry()
    # a budget a loaded machine's healthy calls stay well within; the frozen shard's exceed it
    cfg = CheckpointConfig(budget_ms=250, breaker_failures=3, breaker_cooldown_s=COOLDOWN_S)
    async with Checkpointer.from_url(redis_cluster.url, config=cfg, registry=registry) as cp:
        managers = [cp.manager(RunContext(user_id="u", run_id=f"r{i}")) for i in range(40)]
        owner = {m.run_id: redis_cluster.owner_port(m.keys.meta) for m in managers}
        victim = owner[managers[0].run_id]
        frozen = [m for m in managers if owner[m.run_id] == victim]
        healthy = [m for m in managers if owner[m.run_id] != victim]
        assert frozen and healthy
        for m in managers:  # discovery done, every shard answers
            assert await m.save_section("a", 1)

        redis_cluster.node(victim).pause()
        frozen_at = time.monotonic()
        try:
            for _ in range(3):  # interleaved: healthy calls come while the victim's circuit is open
                for m in managers:
                    ok = await m.save_section("b", m.run_id)
                    assert ok is (m in healthy), (m.run_id, owner[m.run_id])
            assert cp.breaker_for(frozen[0].slot or 0).is_open
            assert not any(cp.breaker_for(m.slot or 0).is_open for m in healthy)
            assert registry.get_sample_value("checkpoint_circuit_open") == 1
        finally:
            redis_cluster.node(victim).resume()
        frozen_for = time.monotonic() - frozen_at

        # every call to the healthy shards succeeded; every call to the frozen one failed: its
        # threshold and one probe per elapsed cooldown timed out, the rest were skipped (no I/O)
        assert count(registry, "ok") == len(managers) + 3 * len(healthy)
        timed_out, skipped = count(registry, "timeout"), count(registry, "skipped")
        assert timed_out + skipped == 3 * len(frozen)
        probes = math.floor(frozen_for / COOLDOWN_S)
        assert cfg.breaker_failures <= timed_out <= cfg.breaker_failures + probes, frozen_for
        assert skipped > 0

        await asyncio.sleep(COOLDOWN_S + 0.1)  # the cooldown passes: the next call is the probe
        assert await frozen[0].save_section("b", frozen[0].run_id)
        assert registry.get_sample_value("checkpoint_circuit_open") == 0
        # (a timed-out save may or may not have been applied). The checks read through the
        # same client, strict, so that a read that only ran out of budget is tried again.
        checker = Checkpointer(
            cp.store.client, CheckpointConfig(budget_ms=250, strict=True),
            registry=CollectorRegistry(),
        )  # fmt: skip
        for m in [*healthy, frozen[0]]:
            read = checker.manager(RunContext(user_id="u", run_id=m.run_id)).load_section
            assert await answered_async(functools.partial(read, "b")) == m.run_id
