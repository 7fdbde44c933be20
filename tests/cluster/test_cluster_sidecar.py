"""``checkpoint-sidecar serve --redis-url redis+cluster://...``: a real sidecar process watching
every primary of the session cluster, its expiries on /metrics."""

from __future__ import annotations

from pathlib import Path

from cluster_support import LocalCluster, WholeClusterClient
from prometheus_client import CollectorRegistry
from server.helpers import SidecarProcess, serve_args, wait_until

from sidecar import CheckpointConfig, Checkpointer, RunContext

EXPIRIES = "checkpoint_ttl_expiries_total"


async def test_serve_on_a_cluster_counts_expiries_of_every_primary(
    redis_cluster: LocalCluster, cluster_client: WholeClusterClient, tmp_path: Path
) -> None:
    sidecar = SidecarProcess(serve_args(redis_cluster.url, "svc"), tmp_path).start()
    try:
        sidecar.wait_serving()
        wait_until(
            lambda: sidecar.metric("sidecar_expiry_watcher_counting") == 1, "it counts"
        )  # HTTP is served at once; the watcher connects in the background
        status, ready = sidecar.readyz()
        assert (status, ready["watcher"], ready["redis"]) == (200, "counting", "up"), ready
        cfg = CheckpointConfig(key_prefix="svc", ttl_seconds=1, budget_ms=2000)
        ctxs = [RunContext(user_id="u", run_id=f"r{i}") for i in range(9)]
        async with Checkpointer(cluster_client, cfg, registry=CollectorRegistry()) as cp:
            for c in ctxs:
                assert await cp.manager(c).save_section("s", 1)
        owners = {redis_cluster.owner_port(cp.manager(c).keys.meta) for c in ctxs}
        assert len(owners) == 3
        wait_until(lambda: sidecar.metric(EXPIRIES) == len(ctxs), "expiries on /metrics")
        assert sidecar.metric("sidecar_expiry_watcher_up") == 1
    finally:
        sidecar.kill()
    assert "Traceback" not in sidecar.stderr
