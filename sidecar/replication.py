"""Replicated saves, async shell: the save script and ``WAIT`` / ``WAITAOF`` in one round trip.

The rules (what to wait for, the timeouts, reading the replies) are in
:mod:`sidecar.core.durability`; this module does the I/O. The script and its waits are packed
into one write on one connection taken from the client's pool (on a cluster, from the node
that owns the run's slot, so ``WAIT`` runs where the write ran: redis-py's cluster pipeline
would send a keyless ``WAIT`` to every primary and add up the replies). The script's reply is
read, then the waits' replies until just before the budget ends; a read cut short drops the
connection (redis-py disconnects a cancelled read), so a late ``WAIT`` reply is never read by
another command.

Not acknowledged in time is not an outage: Redis answered and the write is on the primary;
the caller turns it into ``False`` and outcome ``unreplicated`` (best effort) or
:class:`~sidecar.errors.NotReplicated`, a ``CheckpointTimeout`` (strict). A ``MOVED`` reply
(a stale slot map, after a failover) updates the map and sends the pair again to the new
owner, once; the old owner's ``WAIT`` reply never confirms anything. Like
:mod:`sidecar.store`, this module maps every redis-py error to our own.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import redis.exceptions as rexc
from redis.asyncio.cluster import RedisCluster

from sidecar.core.durability import (
    Durability,
    MoveSlot,
    Replicated,
    Replication,
    durable_save,
    stop_reading_at,
    wait_commands,
    wait_timeout_ms,
)
from sidecar.core.ops import Arg
from sidecar.store import RedisClient, mapped_error

if TYPE_CHECKING:
    from sidecar.lua import Script

logger = logging.getLogger("sidecar")


async def run_script_durably(
    client: RedisClient,
    script: Script,
    keys: Sequence[str],
    args: Sequence[Arg],
    durability: Durability,
    *,
    deadline: float,
) -> tuple[Any, Replication]:
    """Run ``script`` and wait for ``durability``, in one round trip; (reply, replication).

    ``deadline`` is the event loop time at which the caller's budget ends. The caller has
    discovered the cluster already (:meth:`sidecar.store.Store.send` does it). What to
    send, and when to send again, is :func:`sidecar.core.durability.durable_save`'s.
    """
    steps = durable_save(client, partial(_node_name, client), script, keys, args, durability)
    answer: Any = None
    try:
        while True:
            request = steps.send(answer)
            if isinstance(request, MoveSlot):
                assert isinstance(client, RedisCluster)
                moved = client.nodes_manager.move_slot(request.moved)  # type: ignore[arg-type]
                answer = await moved if inspect.isawaitable(moved) else None
            else:
                answer = await _exchange(client, request.key, request.head, durability, deadline)
    except StopIteration as done:
        saved: Replicated = done.value
    except (rexc.RedisError, rexc.RedisClusterException) as exc:
        raise mapped_error(script.name, exc) from exc
    if not saved.replication.confirmed and "WAITAOF refused" in saved.replication.detail:
        logger.warning("min_local_fsync: %s", saved.replication.detail)
    return saved.reply, saved.replication


def _node_name(client: RedisClient, key: str) -> str:
    if isinstance(client, RedisCluster):
        node = client.get_node_from_key(key)
        return "" if node is None else str(node.name)
    return ""


async def _exchange(
    client: RedisClient,
    key: str,
    head: tuple[Arg, ...],
    durability: Durability,
    deadline: float,
) -> tuple[Any, list[Any] | None]:
    """Send the script and the waits on one connection in one write; read the script's reply,
    then the waits' until just before ``deadline``. (script reply or its error, wait replies
    or None when the budget ran out first).

    Why not ``WAIT``'s own timeout alone: servers check blocked clients' timeouts on their
    ``hz`` tick (100 ms by default), so a WAIT of 50 ms returns after ~100 ms, past a 100 ms
    budget. Reading with a deadline of our own reports "not acknowledged" within the budget
    whatever the server's ``hz``; the connection, with a WAIT reply still to come, is
    dropped (redis-py disconnects a read that is cancelled), never reused.
    """
    loop = asyncio.get_running_loop()
    remaining = deadline - loop.time()
    waits = wait_commands(durability, wait_timeout_ms(remaining))
    stop_reading = stop_reading_at(deadline, loop.time())
    if isinstance(client, RedisCluster):
        node = client.get_node_from_key(key)  # the primary owning the run's slot
        if node is None:
            raise rexc.SlotNotCoveredError(f"slot of {key!r} is not covered")
        conn: Any = node.acquire_connection()
        release: Any = node.release
    else:
        conn = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        release = client.connection_pool.release
    try:
        await conn.send_packed_command(conn.pack_commands([head, *waits]))
        try:
            first = await conn.read_response()
        except rexc.ResponseError as exc:  # NOSCRIPT, MOVED...: the waits' replies would follow
            await conn.disconnect()
            return exc, None
        try:
            async with asyncio.timeout_at(stop_reading):
                replies = [await _reply(conn) for _ in waits]
        except TimeoutError:  # the cancelled read dropped the connection
            return first, None
        return first, replies
    finally:
        released = release(conn)
        if inspect.isawaitable(released):
            await released


async def _reply(conn: Any) -> Any:
    try:
        return await conn.read_response()
    except rexc.ResponseError as exc:  # an error reply was read whole: the stream is aligned
        return exc
