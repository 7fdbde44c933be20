"""Replicated saves: the save script and ``WAIT`` / ``WAITAOF`` in one round trip.

Redis replicates asynchronously: a primary acknowledges a write before any replica has it, so
a save confirmed a moment before the primary dies can vanish when a replica is promoted. With
``min_replicas >= 1`` a save is confirmed only once that many replicas acknowledged it
(``WAIT``); with ``min_local_fsync`` only once the primary fsynced its AOF (``WAITAOF 1 0``,
Redis 7.2+ / Valkey). Both ride in the same non-transactional pipeline as the ``EVALSHA``, on
the same connection (``WAIT`` counts the offset of *this connection's* last write, so it must
follow the write on the connection that made it), so the save stays one round trip.

``WAIT``'s timeout is the remaining budget minus a margin for the reply to come back, never
0 (which means "forever" to Redis). Not acknowledged in time is not an outage: Redis answered
and the write is on the primary; the caller turns it into ``False`` and outcome
``unreplicated`` (best effort) or :class:`~sidecar.errors.CheckpointTimeout` (strict).

On a cluster the pipeline is a ``ClusterPipeline`` and ``WAIT`` is sent with
``target_nodes=`` the primary that owns the run's slot, so both commands travel together to
that node (redis-py would otherwise send a keyless ``WAIT`` to every primary and add up the
replies). If the slot moved (``MOVED``), redis-py would re-send the ``EVALSHA`` alone to the new
owner and leave the ``WAIT`` reply of the old one: redirections are therefore disabled here,
the slot map is updated, and the pair is sent again to the new owner, once (saves are
idempotent). Like :mod:`sidecar.store`, this module maps every redis-py error to our own.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import redis.exceptions as rexc
from redis.asyncio.cluster import RedisCluster

from sidecar.store import Arg, RedisClient, mapped_error

if TYPE_CHECKING:
    from sidecar.config import CheckpointConfig
    from sidecar.lua import Script

logger = logging.getLogger("sidecar")
MARGIN_FRACTION: Final = 0.1  # of the remaining budget, kept for WAIT's reply to come back
MIN_MARGIN_MS: Final = 2


@dataclass(frozen=True, slots=True)
class Durability:
    """What a save must reach before it is confirmed."""

    replicas: int = 0
    local_fsync: bool = False

    @classmethod
    def from_config(cls, config: CheckpointConfig) -> Durability:
        return cls(config.min_replicas, config.min_local_fsync)

    @property
    def active(self) -> bool:
        """False when a save is confirmed by the primary alone (the default)."""
        return self.replicas > 0 or self.local_fsync


@dataclass(frozen=True, slots=True)
class Replication:
    """What the server acknowledged for one save."""

    confirmed: bool
    replicas: int | None = None  # replicas that acknowledged (WAIT), None when not asked
    local_fsync: bool | None = None  # the primary fsynced (WAITAOF), None when not asked
    detail: str = ""  # why not confirmed, for messages (no content, no ids)


CONFIRMED: Final = Replication(True)


def wait_timeout_ms(remaining_s: float) -> int:
    """``WAIT``'s timeout for ``remaining_s`` of budget: leave a margin for the reply, and
    never 0, which Redis reads as "block forever"."""
    remaining_ms = remaining_s * 1000.0
    margin = max(MIN_MARGIN_MS, remaining_ms * MARGIN_FRACTION)
    return max(1, int(remaining_ms - margin))


def wait_commands(durability: Durability, timeout_ms: int) -> list[tuple[Arg, ...]]:
    """The commands that follow the save in its pipeline."""
    commands: list[tuple[Arg, ...]] = []
    if durability.replicas > 0:
        commands.append(("WAIT", durability.replicas, timeout_ms))
    if durability.local_fsync:
        commands.append(("WAITAOF", 1, 0, timeout_ms))
    return commands


def judge(durability: Durability, replies: Sequence[Any]) -> Replication:
    """Classify the replies of :func:`wait_commands` (in order): confirmed or not, and why."""
    replies = list(replies)
    acked: int | None = None
    fsynced: bool | None = None
    problems: list[str] = []
    if durability.replicas > 0:
        reply = replies.pop(0)
        if isinstance(reply, Exception):
            problems.append(f"WAIT refused ({_code(reply)})")
        else:
            acked = int(reply)
            if acked < durability.replicas:
                problems.append(
                    f"{acked} of {durability.replicas} replicas acknowledged within the budget"
                )
    if durability.local_fsync:
        reply = replies.pop(0)
        if isinstance(reply, Exception):
            problems.append(f"WAITAOF refused ({_code(reply)}): {_waitaof_hint(reply)}")
        else:
            fsynced = int(reply[0]) >= 1
            if not fsynced:
                problems.append("the primary did not fsync its AOF within the budget")
    return Replication(not problems, acked, fsynced, "; ".join(problems))


def _code(exc: Exception) -> str:
    return str(exc).split(" ", 1)[0] or type(exc).__name__


def _waitaof_hint(exc: Exception) -> str:
    text = str(exc).lower()
    if "unknown command" in text:
        return "the server has no WAITAOF (Redis < 7.2); turn min_local_fsync off"
    if "appendonly" in text:
        return "the server has appendonly off; turn it on, or min_local_fsync off"
    return "min_local_fsync cannot be honoured"


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
    discovered the cluster already (:meth:`sidecar.store.Store.run_script` does it). A second
    round trip happens only on NOSCRIPT (once per server) or after a MOVED.
    """
    loop = asyncio.get_running_loop()
    use_eval = False
    redirected = False
    while True:
        timeout_ms = wait_timeout_ms(deadline - loop.time())
        try:
            replies = await _send(client, script, keys, args, durability, timeout_ms, use_eval)
        except (rexc.RedisError, rexc.RedisClusterException) as exc:
            raise mapped_error(script.name, exc) from exc
        first = replies[0]
        if isinstance(first, rexc.NoScriptError) and not use_eval:
            use_eval = True
            continue
        if isinstance(first, rexc.MovedError) and not redirected:
            assert isinstance(client, RedisCluster)
            moved = client.nodes_manager.move_slot(first)
            if inspect.isawaitable(moved):
                await moved
            redirected = True
            continue
        if isinstance(first, Exception):
            raise mapped_error(script.name, first) from first
        replication = judge(durability, replies[1:])
        if not replication.confirmed and replication.detail.startswith("WAITAOF refused"):
            logger.warning("min_local_fsync: %s", replication.detail)
        return first, replication


async def _send(
    client: RedisClient,
    script: Script,
    keys: Sequence[str],
    args: Sequence[Arg],
    durability: Durability,
    timeout_ms: int,
    use_eval: bool,
) -> list[Any]:
    head: tuple[Arg, ...] = (("EVAL", script.source) if use_eval else ("EVALSHA", script.sha)) + (
        len(keys),
        *keys,
        *args,
    )
    waits = wait_commands(durability, timeout_ms)
    if isinstance(client, RedisCluster):
        node = client.get_node_from_key(keys[0])  # the primary owning the run's slot
        cluster_pipe = client.pipeline()
        cluster_pipe.execute_command(*head)
        for command in waits:
            cluster_pipe.execute_command(*command, target_nodes=node)
        return list(await cluster_pipe.execute(raise_on_error=False, allow_redirections=False))
    pipe = client.pipeline(transaction=False)
    pipe.execute_command(*head)
    for command in waits:
        pipe.execute_command(*command)
    return list(await pipe.execute(raise_on_error=False))
