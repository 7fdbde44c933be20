"""The only module that talks to Redis: one method per command the library sends, and the
mapping of every redis-py exception to our own hierarchy at this boundary.

Each public coroutine sends exactly one command (EVALSHA, or one plain command); the single
exception is the first call of a script on a server that has not seen it yet (NOSCRIPT), which
is answered with EVAL of the source: one more command, once per server.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeAlias

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster as SyncRedisCluster

from sidecar.core.direct import (
    DirectPath,
    drop_closed,
    give_back,
    packed,
    refresh,
    unobserved,
)
from sidecar.core.durability import Replicated
from sidecar.core.ops import Command
from sidecar.errors import CheckpointRefused, CheckpointTimeout, CheckpointUnavailable
from sidecar.sockets import OwnedSockets

RedisClient: TypeAlias = "aioredis.Redis | RedisCluster"
Arg: TypeAlias = str | bytes | int | float


# Error replies that mean "no node can serve this now": outages, counted by the breaker.
# Every other error reply (OOM, NOPERM, WRONGTYPE, ...) is Redis answering: a refusal.
OUTAGE_CODES = frozenset({"CLUSTERDOWN", "MASTERDOWN", "READONLY", "LOADING", "TRYAGAIN", "BUSY"})


def error_code(exc: rexc.ResponseError) -> str:
    """The Redis error code (OOM, NOPERM, ...) of an error reply.

    redis-py strips the code from the text of the exceptions it knows (ReadOnlyError,
    NoPermissionError, OutOfMemoryError, ...): take it back from the class then.
    """
    known: dict[type[rexc.ResponseError], str] = {
        rexc.ReadOnlyError: "READONLY",
        rexc.NoPermissionError: "NOPERM",
        rexc.OutOfMemoryError: "OOM",
        rexc.NoScriptError: "NOSCRIPT",
        rexc.MasterDownError: "MASTERDOWN",  # before its base class, ClusterDownError
        rexc.ClusterDownError: "CLUSTERDOWN",
        rexc.TryAgainError: "TRYAGAIN",
    }
    for cls, code in known.items():
        if isinstance(exc, cls):
            return code
    return getattr(exc, "status_code", None) or str(exc).split(" ", 1)[0] or type(exc).__name__


def mapped_error(operation: str, exc: Exception) -> CheckpointTimeout | CheckpointUnavailable:
    """Our error for a redis-py exception (the caller raises it ``from`` the original).

    Messages name the operation and the error class or Redis error code, never the URL or
    credentials.
    """
    if isinstance(exc, rexc.TimeoutError):
        return CheckpointTimeout(f"{operation}: Redis timed out")
    if isinstance(exc, rexc.ConnectionError):  # includes AuthenticationError
        return CheckpointUnavailable(f"{operation}: Redis unreachable ({type(exc).__name__})")
    if isinstance(exc, rexc.ResponseError):
        code = error_code(exc)
        if code in OUTAGE_CODES:
            return CheckpointUnavailable(f"{operation}: Redis cannot serve now ({code})")
        return CheckpointRefused(f"{operation}: Redis refused the command ({code})")
    if isinstance(exc, rexc.RedisClusterException):  # no node reachable, slot not covered
        return CheckpointUnavailable(
            f"{operation}: Redis Cluster unavailable ({type(exc).__name__})"
        )
    return CheckpointUnavailable(f"{operation}: Redis error ({type(exc).__name__})")


@contextlib.contextmanager
def mapped_errors(operation: str) -> Iterator[None]:
    """Raise :func:`mapped_error` of any redis-py exception raised inside the block."""
    try:
        yield
    except (rexc.RedisError, rexc.RedisClusterException) as exc:
        raise mapped_error(operation, exc) from exc


def build_client(
    url: str, *, cluster: bool = False, sockets: OwnedSockets | None = None
) -> RedisClient:
    """A client whose own retries and socket timeout are off: the overhead budget, not redis-py,
    decides when to give up, and "unreachable" stays "unreachable" instead of "timed out".

    ``socket_timeout=None`` matters beyond that: with a socket timeout (redis-py 8 defaults to
    5 s) redis-py wraps every send in ``asyncio.wait_for``, which on Python 3.11 drops a
    cancellation that lands as the send completes, so the budget's timeout, or the caller's
    own ``task.cancel()``, could be lost (see :func:`drops_cancellations`).

    ``sockets`` records the connections' transports so that closing waits for TLS closes
    (:mod:`sidecar.sockets`); a single server only: ``RedisCluster`` takes no connect callback.
    """
    if cluster:
        url = url.replace("redis+cluster://", "redis://", 1).replace(
            "rediss+cluster://", "rediss://", 1
        )
        return RedisCluster.from_url(url, retry=Retry(NoBackoff(), 0), socket_timeout=None)
    return aioredis.Redis.from_url(
        url, retry=Retry(NoBackoff(), 0), health_check_interval=0, socket_timeout=None,
        redis_connect_func=None if sockets is None else sockets.on_connect,
    )  # fmt: skip


def drops_cancellations(client: RedisClient) -> bool:
    """Whether this client's sends go through ``asyncio.wait_for`` on a Python (< 3.12) whose
    ``wait_for`` can swallow a cancellation: true when a socket timeout is set."""
    if sys.version_info >= (3, 12):
        return False
    if isinstance(client, RedisCluster):
        kwargs = client.connection_kwargs
    else:
        kwargs = client.connection_pool.connection_kwargs
    # absent: the connection's own default applies, 5 s in redis-py 8
    return "socket_timeout" not in kwargs or kwargs["socket_timeout"] is not None


def is_cluster(client: Any) -> bool:
    """A Redis Cluster client, asyncio's or the sync one (the sync API shares these helpers)."""
    return isinstance(client, RedisCluster | SyncRedisCluster)


def key_slot(client: Any, key: str) -> int | None:
    """The hash slot of ``key`` on a cluster; None on a single server."""
    return int(client.keyslot(key)) if is_cluster(client) else None


def shard_name(client: Any, slot: int) -> str:
    """Name (host:port) of the primary serving ``slot`` now, as the client last learned it.

    "" on a single server, and on a cluster before discovery or while a slot is uncovered.
    A failover changes the answer once the client has learned the new topology.
    """
    if not is_cluster(client):
        return ""
    try:
        return str(client.nodes_manager.get_node_from_slot(slot).name)
    except (rexc.SlotNotCoveredError, KeyError):
        return ""


def server_address(client: Any) -> tuple[str, int]:
    """Host and port for span attributes (the default node of a cluster: before the client
    has discovered the topology, the first startup node of its URL)."""
    if is_cluster(client):
        node = client.get_default_node()
        if node is None:
            known = client.get_nodes() or list(client.nodes_manager.startup_nodes.values())
            node = known[0] if known else None
        return (str(node.host), int(node.port)) if node is not None else ("unknown", 0)
    kwargs = client.connection_pool.connection_kwargs
    return str(kwargs.get("host", kwargs.get("path", "localhost"))), int(kwargs.get("port", 0))


_PLAIN_EXECUTE = inspect.unwrap(aioredis.Redis.execute_command)


async def _run(pool: Any, command: Command, lean: bool, sent: Callable[[], None]) -> Any:
    """``command`` on a connection of ``pool``: EVALSHA of its script (EVAL on NOSCRIPT) or
    the plain command (:mod:`sidecar.core.direct` says why not through ``execute_command``,
    and when ``lean`` takes and gives back the connection without the pool's wrappers);
    ``sent()`` once it is written, before the reply is awaited. A cancelled read (the budget)
    makes redis-py drop the connection, as on its own path."""
    conn = pool.get_available_connection() if lean else await pool.get_connection()
    try:
        await refresh(conn)  # one the server closed while it sat in the pool
        if not conn.is_connected:  # new, or just refreshed (connect() always goes through a
            await conn.connect()  # retry wrapper, even with nothing to do)
    except BaseException:
        await pool.release(conn)
        raise
    try:
        await conn.send_packed_command(packed(command, conn.encoder))
        sent()  # Redis works on the command meanwhile
        try:
            return await conn.read_response()
        except rexc.NoScriptError:
            await conn.send_packed_command(packed(command, conn.encoder, source=True))
            return await conn.read_response()
    except rexc.ResponseError:
        raise  # an error reply, read whole: the connection is aligned
    except BaseException:
        await conn.disconnect(nowait=True)  # a reply may still be in flight
        raise
    finally:
        if lean and not conn.should_reconnect():
            give_back(pool, conn)
        else:
            await pool.release(conn)


class Store:
    """One Redis (or Redis Cluster) client and the commands the library sends through it."""

    def __init__(self, client: RedisClient, sockets: OwnedSockets | None = None) -> None:
        self.client = client
        self.sockets = sockets  # the client's transports, when we built it (closing waits)
        self._cluster = self._discover = isinstance(client, RedisCluster)
        self._discovery = asyncio.Lock()
        self._direct = DirectPath(client, aioredis.Redis, _PLAIN_EXECUTE, aioredis.ConnectionPool)

    def slot(self, key: str) -> int | None:
        return key_slot(self.client, key)

    def shard(self, slot: int) -> str:
        return shard_name(self.client, slot)

    async def _ready(self) -> None:
        """Discover a cluster's topology once, before its first command.

        redis-py lets every concurrent first command of a fresh ``RedisCluster`` start the
        discovery, and those racing discoveries close connections other commands are using
        (64 concurrent first saves: several fail with ConnectionError or AttributeError). One
        discovery, awaited by all, avoids it; later re-discoveries (after a failover) are
        redis-py's own.
        """
        if self._discover:
            async with self._discovery:
                if self._discover:
                    assert isinstance(self.client, RedisCluster)
                    await self.client.initialize()
                    self._discover = False

    async def send(
        self,
        operation: str,
        command: Command,
        budget_s: float = 0.0,
        sent: Callable[[], None] = unobserved,
    ) -> Any:
        """Send one command (an op's): EVALSHA of its script, or the plain command. With
        ``command.wait``, WAIT / WAITAOF follow in the same round trip, answered within
        ``budget_s`` from now (:mod:`sidecar.replication`). ``sent()`` is called once: when
        the command is written on the direct path, else just before redis-py sends it
        (:class:`sidecar.core.calls.Call` builds its span then)."""
        script = command.script
        if command.wait is not None:
            sent()
            deadline = asyncio.get_running_loop().time() + budget_s
            return await self.run_script_durably(command, deadline)
        # the hot path of every save and load: a plain try/except (a context manager costs
        # ~1 us a call), and the cluster discovery check before any await
        keys = command.keys
        try:
            if self._cluster:
                if self._discover:
                    await self._ready()
                if keys:
                    await drop_closed(self.client, keys[0])
            pool = self._direct.pool_for(command.name)
            if pool is not None:
                return await _run(pool, command, self._direct.lean, sent)
            sent()
            if script is None:
                return await self.client.execute_command(command.name, *keys, *command.args)
            try:
                return await self.client.evalsha(script.sha, len(keys), *keys, *command.args)
            except rexc.NoScriptError:
                return await self.client.eval(script.source, len(keys), *keys, *command.args)
        except (rexc.RedisError, rexc.RedisClusterException) as exc:
            raise mapped_error(script.name if script else operation, exc) from exc

    async def run_script_durably(self, command: Command, deadline: float) -> Replicated:
        from sidecar.replication import run_script_durably

        assert command.script is not None
        assert command.wait is not None
        if self._discover:
            with mapped_errors(command.script.name):
                await self._ready()
        reply, replication = await run_script_durably(
            self.client, command.script, command.keys, command.args, command.wait,
            deadline=deadline,
        )  # fmt: skip
        return Replicated(reply, replication)

    async def hget(self, operation: str, key: str, field: str) -> Any:
        with mapped_errors(operation):
            await self._ready()
            return await self.client.hget(key, field)

    async def hgetall(self, operation: str, key: str) -> dict[Any, Any]:
        with mapped_errors(operation):
            await self._ready()
            result: dict[Any, Any] = await self.client.hgetall(key)
            return result

    async def exists(self, operation: str, key: str) -> bool:
        with mapped_errors(operation):
            await self._ready()
            return bool(await self.client.exists(key))

    async def unlink(self, operation: str, *keys: str) -> int:
        with mapped_errors(operation):
            await self._ready()
            return int(await self.client.unlink(*keys))

    async def connect(self, connections: int = 1) -> None:
        """Discover a cluster and open ``connections`` connections to every primary (one
        PING on each, sent at once so that each takes its own connection from the pool)."""
        with mapped_errors("connect"):
            await self._ready()
            if isinstance(self.client, RedisCluster):
                ping = self.client.execute_command("PING", target_nodes=RedisCluster.PRIMARIES)
                await asyncio.gather(ping, *(
                    self.client.execute_command("PING", target_nodes=RedisCluster.PRIMARIES)
                    for _ in range(connections - 1)
                ))  # fmt: skip
            else:
                await asyncio.gather(*(self.client.ping() for _ in range(connections)))

    async def ping(self) -> bool:
        with mapped_errors("ping"):
            await self._ready()
            return bool(await self.client.ping())

    async def aclose(self) -> None:
        await close_client(self.client)
        if self.sockets is not None:
            await self.sockets.shut()


async def close_client(client: RedisClient) -> None:
    """Close ``client`` and every connection it holds, whatever state redis-py left it in.

    redis-py's ``RedisCluster.aclose()`` does nothing while the client is flagged for
    re-discovery, and the first ConnectionError a command meets sets that flag: a cluster
    client closed after an outage kept every socket open, until garbage collection reported
    them unclosed. Here each node's connections are closed explicitly.
    """
    with contextlib.suppress(rexc.RedisError, OSError):
        await client.aclose()
    if isinstance(client, RedisCluster):
        manager = client.nodes_manager
        for nodes in ("nodes_cache", "startup_nodes"):
            with contextlib.suppress(rexc.RedisError, OSError):
                await manager.aclose(nodes)
        await _settle_cluster_background(client)


async def _settle_cluster_background(client: RedisCluster, wait_s: float = 1.0) -> None:
    """Wait for the disconnects redis-py's cluster client starts in the background.

    After a topology refresh it closes old connections in fire-and-forget tasks (on the nodes
    manager and on each node). If the event loop stops before they finish, their sockets stay
    open until garbage collection; closing a Checkpointer waits for them, briefly.
    """
    manager = client.nodes_manager
    holders = [manager, *manager.nodes_cache.values(), *manager.startup_nodes.values()]
    pending = {
        task for holder in holders for task in getattr(holder, "_background_tasks", ()) or ()
    }
    if pending:
        await asyncio.wait(pending, timeout=wait_s)
