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
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis.exceptions as rexc
from redis.asyncio.cluster import RedisCluster

from sidecar.core.durability import (
    Durability,
    Replication,
    judge,
    late_replication,
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
    discovered the cluster already (:meth:`sidecar.store.Store.run_script` does it). The first
    call of a script on a node sends EVAL, later ones EVALSHA; a second round trip happens
    only on NOSCRIPT (the server restarted and lost its scripts) or after a MOVED.
    """
    loaded = _loaded.setdefault(client, set())
    node = _node_name(client, keys[0])
    use_eval = (node, script.sha) not in loaded
    redirected = False
    while True:
        head: tuple[Arg, ...] = (
            ("EVAL", script.source) if use_eval else ("EVALSHA", script.sha)
        ) + (len(keys), *keys, *args)
        try:
            first, waits = await _exchange(client, keys[0], head, durability, deadline)
        except (rexc.RedisError, rexc.RedisClusterException) as exc:
            raise mapped_error(script.name, exc) from exc
        if isinstance(first, rexc.NoScriptError) and not use_eval:  # the server restarted
            loaded.discard((node, script.sha))
            use_eval = True
            continue
        if isinstance(first, rexc.MovedError) and not redirected:
            assert isinstance(client, RedisCluster)
            moved = client.nodes_manager.move_slot(first)
            if inspect.isawaitable(moved):
                await moved
            redirected = True
            node = _node_name(client, keys[0])
            use_eval = (node, script.sha) not in loaded
            continue
        if isinstance(first, Exception):
            raise mapped_error(script.name, first) from first
        loaded.add((node, script.sha))
        if waits is None:
            return first, late_replication(durability)
        replication = judge(durability, waits)
        if not replication.confirmed and "WAITAOF refused" in replication.detail:
            logger.warning("min_local_fsync: %s", replication.detail)
        return first, replication


# Scripts each client has run on each node. A pipelined WAIT runs even when the EVALSHA before
# it fails with NOSCRIPT, and then blocks for its whole timeout when replicas lag: so the first
# durable save of a script on a node sends EVAL (which loads it), later ones EVALSHA.
_loaded: weakref.WeakKeyDictionary[Any, set[tuple[str, str]]] = weakref.WeakKeyDictionary()


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
