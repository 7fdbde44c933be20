"""Replicated saves, thread shell: the save script and ``WAIT`` / ``WAITAOF`` in one round trip.

The twin of :mod:`sidecar.replication` for redis-py's sync clients; the rules are in
:mod:`sidecar.core.durability`. The script and its waits go out in one write on one pooled
connection (the owning primary's on a cluster); the script's reply is read within the call's
deadline (:data:`sidecar.sync.store.DEADLINE`), the waits' replies until just before it. A
read that times out makes redis-py disconnect that connection, so a late ``WAIT`` reply is
never read by another command.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

import redis.exceptions as rexc
from redis.cluster import RedisCluster

from sidecar.core.durability import (
    Durability,
    Replicated,
    judge,
    late_replication,
    stop_reading_at,
    wait_commands,
    wait_timeout_ms,
)
from sidecar.core.ops import Arg, Command
from sidecar.store import mapped_error

NO_DEADLINE_S = 5.0  # a call sent without a budget still waits for replicas only this long

# (node, sha) each client has run: the first durable save of a script on a node sends EVAL,
# so a NOSCRIPT never leaves a pipelined WAIT blocking for nothing.
_loaded: weakref.WeakKeyDictionary[Any, set[tuple[str, str]]] = weakref.WeakKeyDictionary()


def run_script_durably(client: Any, command: Command, operation: str) -> Replicated:
    """Run ``command``'s script and wait for ``command.wait``; the reply and what was
    acknowledged. A second round trip only on NOSCRIPT (server restarted) or MOVED."""
    from sidecar.sync.store import DEADLINE

    script, keys, args, durability = command.script, command.keys, command.args, command.wait
    assert script is not None
    assert durability is not None
    loaded = _loaded.setdefault(client, set())
    node = _node_name(client, keys[0])
    use_eval = (node, script.sha) not in loaded
    redirected = False
    while True:
        head: tuple[Arg, ...] = (
            ("EVAL", script.source) if use_eval else ("EVALSHA", script.sha)
        ) + (len(keys), *keys, *args)
        try:
            first, waits = _exchange(client, keys[0], head, durability, DEADLINE)
        except (rexc.RedisError, rexc.RedisClusterException) as exc:
            raise mapped_error(script.name, exc) from exc
        if isinstance(first, rexc.NoScriptError) and not use_eval:
            loaded.discard((node, script.sha))
            use_eval = True
            continue
        if isinstance(first, rexc.MovedError) and not redirected:
            client.nodes_manager.move_slot(first)
            redirected = True
            node = _node_name(client, keys[0])
            use_eval = (node, script.sha) not in loaded
            continue
        if isinstance(first, Exception):
            raise mapped_error(script.name, first) from first
        loaded.add((node, script.sha))
        if waits is None:
            return Replicated(first, late_replication(durability))
        return Replicated(first, judge(durability, waits))


def _node_name(client: Any, key: str) -> str:
    if _is_cluster(client):
        node = client.get_node_from_key(key)
        return "" if node is None else str(node.name)
    return ""


def _is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


def _exchange(
    client: Any, key: str, head: tuple[Arg, ...], durability: Durability, deadline: Any
) -> tuple[Any, list[Any] | None]:
    """One write, the script's reply, then the waits' replies until just before the call's
    deadline (None when they did not come back in time)."""
    now = time.monotonic()
    ends = deadline.at if deadline.at is not None else now + NO_DEADLINE_S
    waits = wait_commands(durability, wait_timeout_ms(ends - now))
    pool: Any
    if _is_cluster(client):
        owner = client.get_node_from_key(key)  # the primary owning the run's slot
        if owner is None:
            raise rexc.SlotNotCoveredError(f"slot of {key!r} is not covered")
        pool = client.get_redis_connection(owner).connection_pool
    else:
        pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command(conn.pack_commands([head, *waits]))
        try:
            first = conn.read_response()
        except rexc.ResponseError as exc:  # NOSCRIPT, MOVED...: the waits' replies would follow
            conn.disconnect()
            return exc, None
        saved = deadline.at
        deadline.at = stop_reading_at(ends, time.monotonic())
        try:
            replies = [_reply(conn) for _ in waits]
        except rexc.TimeoutError:  # redis-py disconnected the connection
            conn.disconnect()
            return first, None
        finally:
            deadline.at = saved
        return first, replies
    finally:
        pool.release(conn)


def _reply(conn: Any) -> Any:
    try:
        return conn.read_response()
    except rexc.ResponseError as exc:  # an error reply was read whole: the stream is aligned
        return exc
