"""What a save must reach before it is confirmed, and how WAIT / WAITAOF replies say it did.

I/O-free, shared by the async shell (:mod:`sidecar.replication`) and the thread shell
(:mod:`sidecar.sync.store`). Redis replicates asynchronously: a primary acknowledges a write
before any replica has it, so a save confirmed a moment before the primary dies can vanish
when a replica is promoted. With ``min_replicas >= 1`` a save is confirmed only once that many
replicas acknowledged it (``WAIT``); with ``min_local_fsync`` only once the primary fsynced its
AOF (``WAITAOF 1 0``, Redis 7.2+ / Valkey). Both follow the save script on the same connection
(``WAIT`` counts the offset of *this connection's* last write) in the same write: the save
stays one round trip.

``WAIT``'s timeout is the remaining budget minus a margin for the reply, never 0 (which means
"forever" to Redis); the shells also stop reading at the budget, because servers check a
blocked ``WAIT``'s timeout on their ``hz`` tick (100 ms by default).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import redis.exceptions as rexc

if TYPE_CHECKING:
    from sidecar.config import CheckpointConfig
    from sidecar.core.ops import Arg
    from sidecar.lua import Script

MARGIN_FRACTION: Final = 0.1  # of the remaining budget, kept for WAIT's reply to come back
MIN_MARGIN_MS: Final = 2
GUARD_FRACTION: Final = 0.05  # we stop reading WAIT's reply this much before the budget ends
# ... and never less than this: room for the event loop (or thread) waking late on a busy host.
# With 1 ms, a 50 ms budget was overrun by 0.9 ms once in CI (a timer woke 3.4 ms late).
GUARD_S: Final = 0.004


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


def late(durability: Durability) -> str:
    wanted = []
    if durability.replicas:
        wanted.append(f"{durability.replicas} replica(s)")
    if durability.local_fsync:
        wanted.append("the primary's AOF fsync")
    return f"{' and '.join(wanted)} not acknowledged within the budget"


def stop_reading_at(deadline: float, now: float) -> float:
    """When a shell stops waiting for the waits' replies: a little before the budget ends,
    so that "not acknowledged" is reported within it (not as a budget timeout)."""
    return deadline - max(GUARD_S, (deadline - now) * GUARD_FRACTION)


def late_replication(durability: Durability) -> Replication:
    """The replies did not come back before :func:`stop_reading_at`."""
    return Replication(False, detail=late(durability))


@dataclass(frozen=True, slots=True)
class Replicated:
    """A save script's reply and what the server acknowledged of it (a store's answer to a
    command sent with ``wait``)."""

    reply: Any
    replication: Replication


@dataclass(frozen=True, slots=True)
class Exchange:
    """Send ``head`` (EVAL or EVALSHA of the script) and the waits on the connection of the
    node owning ``key``, in one write; the shell answers ``(script reply or its error, wait
    replies or None when they did not come back in time)``."""

    key: str
    head: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class MoveSlot:
    """The reply was MOVED: the shell updates the cluster client's slot map (it answers None)."""

    moved: Exception


# (node, sha) each client has run. A pipelined WAIT runs even when the EVALSHA before it fails
# with NOSCRIPT, and then blocks for its whole timeout when replicas lag: so the first durable
# save of a script on a node sends EVAL (which loads it), later ones EVALSHA.
_loaded: weakref.WeakKeyDictionary[Any, set[tuple[str, str]]] = weakref.WeakKeyDictionary()


def durable_save(
    client: Any,
    node_of: Callable[[str], str],
    script: Script,
    keys: Sequence[str],
    args: Sequence[Any],
    durability: Durability,
) -> Generator[Exchange | MoveSlot, Any, Replicated]:
    """The rules of one durable save, as the requests a shell carries out (send what this
    yields, send its answer back in): one exchange, and a second only on NOSCRIPT (the server
    restarted and lost its scripts) or after one MOVED (a stale slot map, after a failover);
    the old owner's WAIT reply never confirms anything. Raises the script's error reply."""
    loaded = _loaded.setdefault(client, set())
    node = node_of(keys[0])
    use_eval = (node, script.sha) not in loaded
    redirected = False
    while True:
        head = ("EVAL", script.source) if use_eval else ("EVALSHA", script.sha)
        first, waits = yield Exchange(keys[0], (*head, len(keys), *keys, *args))
        if isinstance(first, rexc.NoScriptError) and not use_eval:  # the server restarted
            loaded.discard((node, script.sha))
            use_eval = True
        elif isinstance(first, rexc.MovedError) and not redirected:
            yield MoveSlot(first)
            redirected = True
            node = node_of(keys[0])
            use_eval = (node, script.sha) not in loaded
        elif isinstance(first, Exception):
            raise first
        else:
            loaded.add((node, script.sha))
            if waits is None:
                return Replicated(first, late_replication(durability))
            return Replicated(first, judge(durability, waits))
