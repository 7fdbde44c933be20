"""Closing a cluster Checkpointer closes every connection, whatever state redis-py is in.

redis-py's ``RedisCluster.aclose()`` does nothing while the client is flagged for
re-discovery, and it is flagged by the first ConnectionError a command meets. A Checkpointer
closed after an outage (a killed connection, a failover) therefore left every socket of the
client open, to be reported as an unclosed socket when garbage collection found it, possibly
many tests later. These tests count what the servers still see after the close.
"""

from __future__ import annotations

import time

from cluster_support import LocalCluster, command
from prometheus_client import CollectorRegistry

from sidecar import CheckpointConfig, Checkpointer, RunContext

NAME = "close-probe"


def clients_named(port: int, name: str) -> int:
    """Connections on the node at ``port`` that carry our client name."""
    listing = command(port, "CLIENT", "LIST", "TYPE", "normal")
    assert isinstance(listing, str), listing
    return sum(1 for line in listing.splitlines() if f" name={name} " in line)


def wait_none_named(ports: list[int], name: str, timeout: float = 5.0) -> dict[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        left = {port: clients_named(port, name) for port in ports}
        if not any(left.values()) or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


async def test_closing_after_a_connection_error_closes_every_socket(
    redis_cluster: LocalCluster,
) -> None:
    redis_cluster.flushall()
    primaries = redis_cluster.primary_ports()
    cfg = CheckpointConfig(budget_ms=2000, breaker_failures=100)
    url = f"{redis_cluster.url}?client_name={NAME}"
    cp = Checkpointer.from_url(url, config=cfg, registry=CollectorRegistry())
    try:
        managers = [cp.manager(RunContext(user_id="u", run_id=f"r{i}")) for i in range(24)]
        owners = {redis_cluster.owner_port(m.keys.meta) for m in managers}
        assert owners == set(primaries)  # every primary holds connections of ours
        for m in managers:
            assert await m.save_section("a", 1)
        assert all(clients_named(port, NAME) >= 1 for port in primaries)

        victim = managers[0]
        victim_port = redis_cluster.owner_port(victim.keys.meta)
        command(victim_port, "CLIENT", "KILL", "TYPE", "normal")  # our sockets there die
        assert await victim.save_section("b", 2) is False  # the ConnectionError, counted
    finally:
        await cp.aclose()
    assert wait_none_named(primaries, NAME) == dict.fromkeys(primaries, 0)
