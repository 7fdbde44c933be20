"""The thread API seals and waits the same way (one core, two shells): no plaintext stored,
moved ciphertexts refused, min_replicas confirmed or ``unreplicated``; standalone and cluster.
The sync calls run in a worker thread; the async client only inspects what Redis holds."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from cluster_support import LocalCluster, commands
from prometheus_client import CollectorRegistry

from sidecar import CheckpointConfig, IntegrityError, RunContext, SyncCheckpointer
from sidecar.keys import run_keys
from sidecar.seal import describe

from .conftest import new_key

pytestmark = pytest.mark.backends("standalone", "cluster")
MARKER = "MARKER-sync-PLAINTEXT"
CTX = RunContext(user_id="user-s", run_id="run-s")
OTHER = RunContext(user_id="user-s", run_id="run-t")


def sync_cp(url: str, registry: CollectorRegistry, **settings: Any) -> SyncCheckpointer:
    return SyncCheckpointer.from_url(
        url, config=CheckpointConfig(budget_ms=2000, **settings), registry=registry
    )


async def test_sync_api_seals_and_refuses_moved_values(
    redis_url: str, redis_client: aioredis.Redis, registry: CollectorRegistry, report_text: str
) -> None:
    content = {"title": MARKER, "body": report_text[:20000]}
    key = new_key("k1")

    def work() -> None:
        with sync_cp(redis_url, registry, encryption_keys=[key]) as cp:
            assert cp.manager(CTX).save_section("summary", content)
            assert cp.manager(CTX).load_section("summary") == content

    await asyncio.to_thread(work)
    sections = run_keys("ckpt", CTX.user_id, CTX.run_id).sections
    raw = await redis_client.hget(sections, "summary")
    assert MARKER.encode() not in raw
    assert describe(raw) == {"format": 1, "codec": "zstd", "encrypted": True, "key_id": "k1"}
    await redis_client.hset(run_keys("ckpt", OTHER.user_id, OTHER.run_id).sections, "summary", raw)

    def moved() -> None:
        with sync_cp(redis_url, registry, encryption_keys=[key]) as cp:
            with pytest.raises(IntegrityError, match="failed authentication"):
                cp.manager(OTHER).load_section("summary")

    await asyncio.to_thread(moved)


async def test_sync_api_min_replicas(
    redis_url: str, backend: str, redis_client: aioredis.Redis, registry: CollectorRegistry,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    """The session server has no replica: min_replicas=1 is not confirmed (outcome
    unreplicated). On the cluster each primary has one: confirmed, and on the replica."""

    def save() -> bool:
        with sync_cp(redis_url, registry, min_replicas=1) as cp:
            return cp.manager(CTX).save_section("summary", {"v": 1})

    saved = await asyncio.to_thread(save)
    unreplicated = registry.get_sample_value(
        "checkpoint_operation_duration_seconds_count",
        {"operation": "save_section", "outcome": "unreplicated"},
    )
    key = run_keys("ckpt", CTX.user_id, CTX.run_id).sections
    if backend == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        assert saved is True
        assert unreplicated is None
        (replica,) = cluster.replica_ports_of(cluster.owner_port(key))
        assert commands(replica, ("READONLY",), ("HEXISTS", key, "summary"))[1] == 1
    else:
        assert saved is False
        assert unreplicated == 1
        assert await redis_client.hexists(key, "summary")  # on the primary all the same
