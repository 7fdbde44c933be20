"""The sync API's Redis boundary: every call ends by its budget, whatever Redis does.

redis-py's sync client blocks in ``connect``, ``sendall`` and ``recv``. Each call here sets a
deadline for its thread (:data:`DEADLINE`), and the connection classes below derive every
socket timeout from what is left of it: the connect timeout, the send timeout, and the read
timeout of each reply (the NOSCRIPT fallback, a cluster redirect and a fresh connection's
handshake included). A socket operation that times out makes redis-py disconnect that
connection: it goes back to the pool closed, never with a reply still in flight, so the next
call on it reconnects instead of reading the late reply of another command.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable
from typing import Any, TypeAlias

import redis
import redis.exceptions as rexc
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from sidecar.core.direct import DirectPath, packed, unobserved
from sidecar.core.ops import Command
from sidecar.store import key_slot, mapped_error, mapped_errors, shard_name
from sidecar.sync.replication import run_script_durably

SyncRedisClient: TypeAlias = "redis.Redis | RedisCluster"


class _Deadline(threading.local):
    """The deadline (monotonic seconds) of the call running in this thread, if any."""

    at: float | None = None


DEADLINE = _Deadline()


def remaining() -> float | None:
    """Seconds left of this thread's call; raises redis-py's TimeoutError once spent."""
    at = DEADLINE.at
    if at is None:
        return None
    left = at - time.monotonic()
    if left <= 0:
        raise rexc.TimeoutError("checkpoint budget spent")
    return left


READ_SLACK_S = 0.0005
"""How far past the deadline a reply may be waited for, at most, to spare two system calls
per call (the usual case: the send took microseconds)."""


class _Bounded:
    """Socket timeouts from the call's deadline (mixed into redis-py's connection classes)."""

    socket_timeout: float | None
    socket_connect_timeout: float | None
    _sock: Any

    def _connect(self) -> Any:
        left = remaining()
        if left is not None:
            self.socket_connect_timeout = left
            self.socket_timeout = left
        return super()._connect()  # type: ignore[misc]

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        left = remaining()
        if left is not None and self._sock is not None:
            self._sock.settimeout(left)
        super().send_packed_command(command, check_health)  # type: ignore[misc]

    def read_response(self, disable_decoding: bool = False, **kwargs: Any) -> Any:
        try:
            left = remaining()
        except rexc.TimeoutError:  # spent before the read: the reply is still in flight
            self.disconnect()  # type: ignore[attr-defined]
            raise
        if left is not None:
            # The send just set the socket's timeout to what was left then: re-set it (a
            # system call now, and another when redis-py restores it) only when the send
            # took long enough that the difference matters.
            sock = self._sock
            current = None if sock is None else sock.gettimeout()
            if current is None or current - left > READ_SLACK_S:
                kwargs["timeout"] = left
        return super().read_response(disable_decoding, **kwargs)  # type: ignore[misc]


class BoundedConnection(_Bounded, redis.Connection):
    """TCP connection whose every socket operation ends by the call's deadline."""


class BoundedSSLConnection(_Bounded, redis.SSLConnection):
    """TLS connection whose every socket operation ends by the call's deadline."""


class BoundedUnixConnection(_Bounded, redis.UnixDomainSocketConnection):
    """Unix-socket connection whose every socket operation ends by the call's deadline."""


def build_sync_client(url: str, *, cluster: bool = False) -> SyncRedisClient:
    """A client with redis-py's own retries off and socket timeouts from each call's budget."""
    no_retry = Retry(NoBackoff(), 0)
    if cluster:
        tls = url.startswith("rediss")
        url = url.replace("redis+cluster://", "redis://", 1).replace(
            "rediss+cluster://", "rediss://", 1
        )
        return RedisCluster.from_url(
            url, retry=no_retry, socket_timeout=None,
            connection_class=BoundedSSLConnection if tls else BoundedConnection,
        )  # fmt: skip
    if url.startswith("rediss://"):
        connection_class: type[redis.Connection | redis.UnixDomainSocketConnection] = (
            BoundedSSLConnection
        )
    elif url.startswith("unix://"):
        connection_class = BoundedUnixConnection
    else:
        connection_class = BoundedConnection
    return redis.Redis.from_url(
        url, retry=no_retry, health_check_interval=0, socket_timeout=None,
        connection_class=connection_class,
    )  # fmt: skip


def is_bounded(client: SyncRedisClient) -> bool:
    """Whether the client's connections honour the call deadline (built by us, or by you with
    one of the Bounded connection classes)."""
    if isinstance(client, RedisCluster):
        kwargs = client.nodes_manager.connection_kwargs
        cls = kwargs.get("connection_class", redis.Connection)
    else:
        cls = client.connection_pool.connection_class
    return isinstance(cls, type) and issubclass(cls, _Bounded)


_PLAIN_EXECUTE = inspect.unwrap(redis.Redis.execute_command)


def _run(pool: Any, command: Command, sent: Callable[[], None]) -> Any:
    """``command`` on a connection of ``pool``, bounded by the call's deadline: EVALSHA of its
    script (EVAL on NOSCRIPT) or the plain command (:mod:`sidecar.core.direct` says why not
    through ``execute_command``); ``sent()`` once it is written, before the reply is read."""
    conn = pool.get_connection()
    try:
        conn.send_packed_command([packed(command, conn.encoder)])
        sent()  # Redis works on the command meanwhile
        try:
            return conn.read_response()
        except rexc.NoScriptError:
            conn.send_packed_command([packed(command, conn.encoder, source=True)])
            return conn.read_response()
    except rexc.ResponseError:
        raise  # an error reply, read whole: the connection is aligned
    except BaseException:
        conn.disconnect()  # a reply may still be in flight
        raise
    finally:
        pool.release(conn)


class SyncStore:
    """One sync Redis (or Redis Cluster) client; thread-safe (redis-py's connection pools)."""

    def __init__(self, client: SyncRedisClient) -> None:
        self.client = client
        self._discovery = threading.Lock()
        self._direct = DirectPath(client, redis.Redis, _PLAIN_EXECUTE)

    def slot(self, key: str) -> int | None:
        return key_slot(self.client, key)

    def shard(self, slot: int) -> str:
        return shard_name(self.client, slot)

    def send(
        self,
        operation: str,
        command: Command,
        budget_s: float | None,
        sent: Callable[[], None] = unobserved,
    ) -> Any:
        """Send one command within ``budget_s`` seconds (None: no deadline): EVALSHA of its
        script (EVAL on NOSCRIPT), or the plain command. ``sent()`` is called once: when the
        command is written on the direct path, else just before redis-py sends it."""
        DEADLINE.at = None if budget_s is None else time.monotonic() + budget_s
        script = command.script
        try:
            if command.wait is not None:
                sent()
                return run_script_durably(self.client, command, operation)
            pool = self._direct.pool_for(command.name)
            if pool is not None:
                return _run(pool, command, sent)
            sent()
            keys = command.keys
            if script is None:
                return self.client.execute_command(  # type: ignore[no-untyped-call]
                    command.name, *keys, *command.args
                )
            try:
                return self.client.evalsha(script.sha, len(keys), *keys, *command.args)
            except rexc.NoScriptError:
                return self.client.eval(script.source, len(keys), *keys, *command.args)
        except (rexc.RedisError, rexc.RedisClusterException) as exc:
            raise mapped_error(script.name if script else operation, exc) from exc
        finally:
            DEADLINE.at = None

    def connect(self, wait_s: float, connections: int = 1) -> None:
        """Open ``connections`` pooled connections to every primary within ``wait_s`` (held
        at once, so that the pool makes that many, then given back)."""
        DEADLINE.at = time.monotonic() + wait_s
        try:
            with mapped_errors("connect"):
                if isinstance(self.client, RedisCluster):
                    self.client.execute_command(  # type: ignore[no-untyped-call]
                        "PING", target_nodes=RedisCluster.PRIMARIES
                    )
                    primaries = self.client.get_primaries()  # type: ignore[no-untyped-call]
                    pools = [n.redis_connection.connection_pool
                             for n in primaries]  # fmt: skip
                else:
                    self.client.ping()
                    pools = [self.client.connection_pool]
                for pool in pools:
                    held = [pool.get_connection() for _ in range(connections)]
                    for connection in held:
                        pool.release(connection)
        finally:
            DEADLINE.at = None

    def close(self) -> None:
        self.client.close()
