"""The replicated-save transport against real servers: a primary with a replica (and a
cluster), WAIT / WAITAOF in the save's round trip, what "not acknowledged in time" returns."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from cluster_support import LocalCluster, WholeClusterClient, command, commands
from redis.asyncio.connection import Connection
from replica_support import replicate, running, start_server, wait_link_up

from sidecar import CheckpointUnavailable
from sidecar.core.durability import Durability, judge, wait_commands, wait_timeout_ms
from sidecar.lua import Script
from sidecar.replication import run_script_durably
from sidecar.server.embedded import EmbeddedServer
from sidecar.store import close_client

# A script of the test's own: the lead's save script changes shape with issue 9.
SET = Script("save_section", "#!lua\nredis.call('SET', KEYS[1], ARGV[1])\nreturn 1\n")


@pytest.fixture
def pair(server_binary: str, tmp_path: Path) -> Iterator[tuple[EmbeddedServer, EmbeddedServer]]:
    primary = start_server(server_binary, tmp_path / "primary")
    replica = start_server(server_binary, tmp_path / "replica")
    try:
        replicate(replica.port, primary.port)
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()


@pytest.fixture
async def client(
    pair: tuple[EmbeddedServer, EmbeddedServer],
) -> AsyncIterator[aioredis.Redis]:
    primary, replica = pair
    await wait_link_up(replica.port, primary.port)
    redis = aioredis.Redis.from_url(primary.url, socket_timeout=None)
    yield redis
    await close_client(redis)


def deadline(seconds: float = 2.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_a_confirmed_save_is_on_the_replica(
    client: aioredis.Redis, pair: tuple[EmbeddedServer, EmbeddedServer]
) -> None:
    reply, replication = await run_script_durably(
        client, SET, ["ckpt:{u:r}:sections"], [b"value-1"], Durability(1), deadline=deadline()
    )
    assert reply == 1
    assert replication.confirmed
    assert replication.replicas == 1
    # no sleep, no polling: WAIT said the replica has it
    assert command(pair[1].port, "GET", "ckpt:{u:r}:sections") == "value-1"


async def test_too_few_replicas_is_not_confirmed_within_the_budget(client: aioredis.Redis) -> None:
    """The server checks WAIT's timeout on its hz tick (100 ms by default), later than a short
    budget: the save is reported not acknowledged at the budget, whatever the server does."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    reply, replication = await run_script_durably(
        client, SET, ["k"], [b"v"], Durability(2), deadline=started + 0.05
    )
    assert loop.time() < started + 0.05  # returned before the caller's budget ran out
    assert reply == 1  # the write is on the primary: Redis answered, it is not an outage
    assert not replication.confirmed
    assert replication.replicas is None  # no answer from WAIT in time
    assert replication.detail == "2 replica(s) not acknowledged within the budget"
    assert await client.get("k") == b"v"  # the next command gets its own reply


async def test_wait_reports_how_many_replicas_acknowledged(
    server_binary: str, tmp_path: Path
) -> None:
    """With a server whose hz lets WAIT time out before the budget, its count comes back."""
    with running(server_binary, tmp_path / "p", "--hz", "100") as primary:
        with running(server_binary, tmp_path / "r") as replica:
            replicate(replica.port, primary.port)
            await wait_link_up(replica.port, primary.port)
            redis = aioredis.Redis.from_url(primary.url, socket_timeout=None)
            try:
                reply, replication = await run_script_durably(
                    redis, SET, ["k"], [b"v"], Durability(2), deadline=deadline(2.0)
                )
            finally:
                await close_client(redis)
    assert reply == 1
    assert not replication.confirmed
    assert replication.replicas == 1
    assert replication.detail == "1 of 2 replicas acknowledged within the budget"


async def test_a_frozen_replica_acknowledges_nothing(
    client: aioredis.Redis, pair: tuple[EmbeddedServer, EmbeddedServer]
) -> None:
    pair[1].pause()
    try:
        _, replication = await run_script_durably(
            client, SET, ["k"], [b"v"], Durability(1), deadline=deadline(0.3)
        )
    finally:
        pair[1].resume()
    assert not replication.confirmed
    assert replication.replicas in (None, 0)


async def test_save_and_wait_travel_in_one_round_trip(
    client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    await client.ping()  # connected, and the script loaded once (NOSCRIPT → EVAL)
    await run_script_durably(client, SET, ["k"], [b"v"], Durability(1), deadline=deadline())
    sends: list[Any] = []
    original = Connection.send_packed_command

    async def counting(self: Connection, command: Any, check_health: bool = True) -> None:
        sends.append(command)
        await original(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counting)
    _, replication = await run_script_durably(
        client, SET, ["k"], [b"v2"], Durability(1), deadline=deadline()
    )
    assert replication.confirmed
    assert len(sends) == 1
    wire = b"".join(bytes(part) for part in sends[0])
    assert b"EVALSHA" in wire
    assert b"WAIT" in wire


async def test_a_server_that_lost_its_scripts_gets_eval(client: aioredis.Redis) -> None:
    """First use of a script sends EVAL (a NOSCRIPT would leave the pipelined WAIT blocking
    for nothing); a server restarted since (script cache empty) gets EVAL again after NOSCRIPT."""
    assert await client.script_exists(SET.sha) == [False]
    reply, replication = await run_script_durably(
        client, SET, ["k"], [b"v"], Durability(1), deadline=deadline()
    )
    assert (reply, replication.confirmed) == (1, True)
    assert await client.script_exists(SET.sha) == [True]
    await client.script_flush()
    reply, replication = await run_script_durably(
        client, SET, ["k"], [b"v2"], Durability(1), deadline=deadline()
    )
    assert (reply, replication.confirmed) == (1, True)
    assert await client.get("k") == b"v2"


async def test_a_cancelled_wait_leaves_no_reply_behind(client: aioredis.Redis) -> None:
    """WAIT blocks the connection; a budget that ends first must drop it, not leave WAIT's late
    reply for the next command to read."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await run_script_durably(
                client, SET, ["k"], [b"v"], Durability(5), deadline=deadline(30.0)
            )
    for i in range(20):
        await client.set(f"after-{i}", i)
        assert await client.get(f"after-{i}") == str(i).encode()


async def test_refused_script_is_an_error_not_a_result(client: aioredis.Redis) -> None:
    broken = Script("save_section", "#!lua\nreturn redis.call('NOSUCHCOMMAND')\n")
    with pytest.raises(CheckpointUnavailable, match=r"save_section: Redis refused"):
        await run_script_durably(client, broken, ["k"], [], Durability(1), deadline=deadline())


def server_version(port: int) -> tuple[int, ...]:
    info = command(port, "INFO", "server")
    assert isinstance(info, str)
    for key in ("valkey_version:", "redis_version:"):
        line = next((x for x in info.splitlines() if x.startswith(key)), None)
        if line is not None:
            return tuple(int(p) for p in line.split(":", 1)[1].strip().split(".")[:2])
    raise AssertionError("no version in INFO")


async def save_with_local_fsync(server: EmbeddedServer) -> tuple[Any, Any]:
    redis = aioredis.Redis.from_url(server.url, socket_timeout=None)
    try:
        return await run_script_durably(
            redis, SET, ["k"], [b"v"], Durability(0, local_fsync=True), deadline=deadline()
        )
    finally:
        await close_client(redis)


async def test_local_fsync_with_waitaof(server_binary: str, tmp_path: Path) -> None:
    """WAITAOF 1 0 where the server has it (Valkey, Redis 7.2+); elsewhere the save is not
    confirmed and the reason names the way out."""
    with running(server_binary, tmp_path / "aof", "--appendonly", "yes") as server:
        reply, replication = await save_with_local_fsync(server)
        version = server_version(server.port)
    assert reply == 1
    if version >= (7, 2):
        assert replication.confirmed
        assert replication.local_fsync is True
    else:
        assert not replication.confirmed
        assert "the server has no WAITAOF (Redis < 7.2)" in replication.detail


async def test_local_fsync_without_aof_is_not_confirmed(server_binary: str, tmp_path: Path) -> None:
    with running(server_binary, tmp_path / "noaof") as server:
        reply, replication = await save_with_local_fsync(server)
        version = server_version(server.port)
    assert reply == 1
    assert not replication.confirmed
    assert "WAITAOF refused" in replication.detail
    assert ("appendonly off" if version >= (7, 2) else "no WAITAOF") in replication.detail


def test_wait_timeout_is_never_zero_and_leaves_a_margin() -> None:
    assert wait_timeout_ms(0.1) == 90
    assert wait_timeout_ms(0.01) == 8
    assert wait_timeout_ms(0.0005) == 1  # 0 would mean "forever" to Redis
    assert wait_timeout_ms(-1.0) == 1
    assert wait_commands(Durability(2, True), 50) == [("WAIT", 2, 50), ("WAITAOF", 1, 0, 50)]
    assert wait_commands(Durability(), 50) == []
    assert not Durability().active
    assert Durability(1).active
    assert Durability(0, True).active


def test_judge() -> None:
    assert judge(Durability(1), [1]).confirmed
    assert judge(Durability(1), [3]).replicas == 3
    assert not judge(Durability(2), [1]).confirmed
    both = judge(Durability(1, True), [1, [1, 0]])
    assert (both.confirmed, both.replicas, both.local_fsync) == (True, 1, True)
    nofsync = judge(Durability(1, True), [1, [0, 0]])
    assert not nofsync.confirmed
    assert nofsync.detail == "the primary did not fsync its AOF within the budget"


@pytest.mark.backends("cluster")
async def test_on_a_cluster_wait_goes_to_the_owning_primary(redis_cluster: LocalCluster) -> None:
    redis_cluster.flushall()
    key = "ckpt:{user-9:run-9}:sections"
    owner = redis_cluster.owner_port(key)
    primaries = redis_cluster.primary_ports()
    for port in primaries:
        command(port, "SCRIPT", "LOAD", SET.source)  # no NOSCRIPT round (one more WAIT)
        command(port, "CONFIG", "RESETSTAT")
    client = WholeClusterClient.from_url(redis_cluster.startup_url, socket_timeout=None)
    try:
        await client.initialize()
        for i in range(3):
            reply, replication = await run_script_durably(
                client, SET, [key], [f"v{i}".encode()], Durability(1), deadline=deadline()
            )
            assert (reply, replication.confirmed, replication.replicas) == (1, True, 1)
    finally:
        await close_client(client)
    waits = {port: wait_calls(port) for port in primaries}
    assert waits == {port: (3 if port == owner else 0) for port in primaries}
    for replica in redis_cluster.replica_ports_of(owner):
        assert commands(replica, ("READONLY",), ("GET", key))[1] == "v2"


def wait_calls(port: int) -> int:
    info = command(port, "INFO", "commandstats")
    assert isinstance(info, str)
    line = next((x for x in info.splitlines() if x.startswith("cmdstat_wait:")), None)
    return 0 if line is None else int(line.split("calls=", 1)[1].split(",", 1)[0])


@pytest.mark.backends("cluster")
async def test_on_a_cluster_a_moved_slot_is_saved_and_waited_for_on_its_new_owner(
    redis_cluster: LocalCluster,
) -> None:
    """A stale slot map (what a failover leaves in a client) sends the pair to the wrong
    primary: its MOVED must not let that primary's WAIT reply confirm the save."""
    redis_cluster.flushall()
    key = "ckpt:{user-7:run-7}:sections"
    owner = redis_cluster.owner_port(key)
    client = WholeClusterClient.from_url(redis_cluster.startup_url, socket_timeout=None)
    try:
        await client.initialize()
        slot = client.keyslot(key)
        wrong = next(n for n in client.get_primaries() if n.port != owner)
        client.nodes_manager.slots_cache[slot] = [wrong]
        reply, replication = await run_script_durably(
            client, SET, [key], [b"moved"], Durability(1), deadline=deadline()
        )
        assert (reply, replication.confirmed, replication.replicas) == (1, True, 1)
        assert client.nodes_manager.get_node_from_slot(slot).port == owner  # map repaired
    finally:
        await close_client(client)
    assert command(owner, "GET", key) == "moved"
    for replica in redis_cluster.replica_ports_of(owner):
        assert commands(replica, ("READONLY",), ("GET", key))[1] == "moved"
