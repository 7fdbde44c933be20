"""Commands straight to a pooled connection: the hot path skips redis-py's per-command wrapper.

redis-py's ``Redis.execute_command`` wraps every command in a retry loop (the library turns
retries off), an event dispatch and its own observability bookkeeping. On a save that costs
15–20 µs, about a tenth of a loopback round trip, for nothing the library uses. So on a
standalone client a script (or a plain command whose reply redis-py would not reshape) goes
straight to a pooled connection: take it, send, read, give it back, with redis-py's own rule
that a connection is dropped when a reply may still be in flight (an error *reply* was read
whole, so it keeps the connection).

redis-py's own path still runs whenever something hooks into it, so nobody's hook is skipped:

- a cluster client (redirects, topology), or a single-connection client (its lock);
- an ``execute_command`` that is wrapped (opentelemetry-instrumentation-redis, any wrapt
  patch) or overridden by a subclass;
- redis-py's own metrics (``redis.observability``) switched on.

Both shells ask :meth:`DirectPath.pool_for` once per call: each test is an attribute
read. The asyncio shell also takes and gives back the connection itself when the pool is
redis-py's plain ``ConnectionPool`` (:attr:`DirectPath.lean`): ``get_connection`` and
``release`` add an ``asyncio.Lock``, an event dispatch and metric bookkeeping around two list
operations, ~10 µs of every call here; what they check that matters (a connection closed by
the server, a reply left unread) is checked by :func:`refresh` instead.

Either way the asyncio shell checks a connection taken from the pool (:func:`refresh`):
redis-py 8's asyncio pool ignores the end of the stream on a connection the server closed
while it sat in the pool when maintenance notifications are ``"auto"`` (its default), so after
a Redis restart, a ``timeout`` or a ``CLIENT KILL`` every pooled connection failed its next
call, an outage each. (The sync pool's check raises on a closed socket and reconnects.) A
cluster client's nodes hand out free connections unchecked: :func:`drop_closed` closes the
ones the server closed before redis-py picks one.

The command is packed here too (:func:`pack`): redis-py's packer spends 10–12 µs on a save's
14 arguments (an ``isinstance`` chain and a few small joins per argument), this one 4 µs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sidecar.core.ops import Arg, Command

try:  # redis-py >= 8 has its own OpenTelemetry metrics; older releases do not
    from redis.observability.providers import get_observability_instance

    def _observability_off() -> bool:
        return get_observability_instance().get_provider_manager() is None

except ImportError:  # pragma: no cover - redis-py < 8

    def _observability_off() -> bool:
        return True


def unobserved() -> None:
    """The default ``sent`` callback of the stores' ``send``: nobody waits for the write."""


class DirectPath:
    """Whether one client's commands may skip ``execute_command``, asked per call.

    ``plain_execute`` is the ``execute_command`` of redis-py's standalone client class (sync
    or asyncio); a client whose class attribute is anything else has a hook on it.
    """

    __slots__ = ("_client", "_plain", "lean", "pool")

    def __init__(
        self,
        client: Any,
        standalone: type[Any],
        plain_execute: Callable[..., Any],
        plain_pool: type[Any] | None = None,
    ) -> None:
        self._client = client
        self._plain = plain_execute
        single = getattr(client, "single_connection_client", False) or (
            getattr(client, "connection", None) is not None
        )
        self.pool: Any = (
            client.connection_pool if isinstance(client, standalone) and not single else None
        )
        self.lean = plain_pool is not None and self.pool is not None and lean(self.pool, plain_pool)

    def pool_for(self, name: str) -> Any:
        """The connection pool to send command ``name`` on directly, or None for redis-py's
        path (also when redis-py would turn the reply into something else: a response
        callback for ``name``, such as HGETALL's under RESP3)."""
        pool = self.pool
        client = self._client
        if (
            pool is None
            or type(client).execute_command is not self._plain
            or client.response_callbacks.get(name) is not None
        ):
            return None
        return pool if _observability_off() else None


def lean(pool: Any, plain_pool: type[Any]) -> bool:
    """Whether connections may be taken from ``pool`` with ``get_available_connection`` (then
    :func:`refresh`, and ``connect`` if need be) and given back with :func:`give_back`, skipping
    ``get_connection`` and ``release``. Only for redis-py's own class (a subclass such as
    ``BlockingConnectionPool`` waits and notifies in them), without a credential provider
    (``release`` re-authenticates connections for a streaming one), and where this redis-py
    keeps its connections where :func:`give_back` expects them."""
    return (
        type(pool) is plain_pool
        and pool.connection_kwargs.get("credential_provider") is None
        and isinstance(getattr(pool, "_in_use_connections", None), set)
        and isinstance(getattr(pool, "_available_connections", None), list)
    )


async def refresh(conn: Any) -> None:
    """Disconnect ``conn`` if the server closed it while it sat idle, so that it is opened
    again before use (by the caller, or by redis-py's next send). Under RESP2 any byte
    waiting on an idle connection means it is not fit to use either (redis-py's own rule);
    under RESP3 (redis-py 8's default) a waiting byte may be a push notification that redis-py
    reads before the next reply, so only the end of the stream counts there. The asyncio
    parsers answer from their buffers: no system call."""
    if not conn.is_connected:
        return
    if conn.protocol == 3:
        reader = getattr(conn, "_reader", None)  # redis-py's StreamReader of the connection
        stale = reader is not None and reader.at_eof()
    else:
        stale = await conn.can_read()
    if stale:
        await conn.disconnect()


async def drop_closed(cluster: Any, key: str) -> None:
    """On a cluster client, :func:`refresh` the idle connections to ``key``'s primary, so
    redis-py opens a closed one again for the call instead of failing it: its cluster nodes
    hand out a free connection unchecked, and the library runs them without retries. Reads
    redis-py's node table and free list; without them (another redis-py), nothing."""
    try:
        node = cluster.nodes_manager.get_node_from_slot(cluster.keyslot(key))
    except Exception:  # no node known for the slot yet: redis-py will say so itself
        return
    for conn in tuple(getattr(node, "_free", ())):
        await refresh(conn)  # reconnected by its next send_packed_command


def give_back(pool: Any, conn: Any) -> None:
    """``pool.release(conn)`` for a :func:`lean` pool whose connection needs nothing more:
    no await between the two list operations, so no other task sees it half done."""
    pool._in_use_connections.remove(conn)
    pool._available_connections.append(conn)


def packed(command: Command, encoder: Any, *, source: bool = False) -> bytes:
    """``command`` as RESP: EVALSHA of its script (EVAL with ``source``), or the command."""
    script, keys = command.script, command.keys
    if script is None:
        return pack(command.name.encode(), (), keys, command.args, encoder)
    if source:
        return pack(b"EVAL", (script.source, len(keys)), keys, command.args, encoder)
    return pack(b"EVALSHA", (script.sha, len(keys)), keys, command.args, encoder)


def pack(name: bytes, head: Sequence[Arg], keys: Sequence[str], args: Sequence[Arg],
         encoder: Any) -> bytes:  # fmt: skip
    """One RESP command, as redis-py would pack it with ``encoder`` (the connection's: its
    ``encoding`` and ``encoding_errors`` for text; ints and floats as their ``repr``)."""
    encoding, errors = encoder.encoding, encoder.encoding_errors
    count = 1 + len(head) + len(keys) + len(args)
    out = [b"*%d\r\n$%d\r\n%b\r\n" % (count, len(name), name)]
    append = out.append
    for group in (head, keys, args):
        for arg in group:
            if isinstance(arg, str):
                data = arg.encode(encoding, errors)
            elif isinstance(arg, bytes):
                data = arg
            elif isinstance(arg, int | float) and not isinstance(arg, bool):
                data = repr(arg).encode()
            else:
                raise TypeError(f"cannot send a {type(arg).__name__} to Redis")
            append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)
