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
from functools import partial
from typing import Any

import redis.exceptions as rexc
from redis.cluster import RedisCluster

from sidecar.core.durability import (
    Durability,
    MoveSlot,
    Replicated,
    durable_save,
    stop_reading_at,
    wait_commands,
    wait_timeout_ms,
)
from sidecar.core.ops import Arg, Command
from sidecar.store import mapped_error

NO_DEADLINE_S = 5.0  # a call sent without a budget still waits for replicas only this long


def run_script_durably(client: Any, command: Command, operation: str) -> Replicated:
    """Run ``command``'s script and wait for ``command.wait``; the reply and what was
    acknowledged (the rules: :func:`sidecar.core.durability.durable_save`)."""
    from sidecar.sync.store import DEADLINE

    script, durability = command.script, command.wait
    assert script is not None
    assert durability is not None
    steps = durable_save(client, partial(_node_name, client), script, command.keys,
                         command.args, durability)  # fmt: skip
    answer: Any = None
    try:
        while True:
            request = steps.send(answer)
            if isinstance(request, MoveSlot):
                answer = client.nodes_manager.move_slot(request.moved)
            else:
                answer = _exchange(client, request.key, request.head, durability, DEADLINE)
    except StopIteration as done:
        saved: Replicated = done.value
        return saved
    except (rexc.RedisError, rexc.RedisClusterException) as exc:
        raise mapped_error(script.name, exc) from exc


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
