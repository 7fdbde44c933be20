"""The sidecar's own Redis clients (watchers, discovery, the start-up probe): built one way,
and closed for good, TLS sockets included.

Built one way: redis-py's retries are off (the callers own reconnection and backoff), and there
is no socket timeout. redis-py 8 defaults to 5 s, and with one it sends through
``asyncio.wait_for``, which on Python 3.11 can drop a cancellation: a watcher then outlives its
``task.cancel()``. Callers bound their commands with ``asyncio.timeout`` instead.

Closed for good: redis-py closes a pub/sub connection, and any connection whose read was
cancelled, with ``disconnect(nowait=True)``: it starts the close and does not wait for it. On a
plain TCP connection that is immediate. On TLS, closing is a handshake with the server
(close_notify both ways), so the socket stays open for a round trip, and when the event loop
stops first (the sidecar shutting down, a test ending) it is never closed and the garbage
collector reports it. :class:`OwnedSockets` records each connection's stream as it connects and,
on close, waits briefly for those handshakes, then aborts what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

CLOSE_GRACE_S = 0.5  # a TLS close handshake takes one round trip; this is many


class OwnedSockets:
    """The streams of one client's connections, so that closing it leaves none open."""

    def __init__(self) -> None:
        self._writers: list[asyncio.StreamWriter] = []

    async def on_connect(self, connection: Any) -> None:
        """redis-py's ``redis_connect_func``: remember the stream, then the usual handshake."""
        # redis-py has no public accessor for a connection's stream; without it (another
        # redis-py), closing simply falls back to redis-py's own behaviour
        writer = getattr(connection, "_writer", None)
        if isinstance(writer, asyncio.StreamWriter):
            self._writers.append(writer)
        await connection.on_connect()

    async def close(self, *closables: Any) -> None:
        """``aclose()`` each client or pub/sub quietly, then make sure every socket is shut."""
        await close_quietly(*closables)
        writers, self._writers = self._writers, []
        await asyncio.gather(*(_shut(writer) for writer in writers))


async def _shut(writer: asyncio.StreamWriter) -> None:
    """Close a stream (redis-py has normally started that), wait up to CLOSE_GRACE_S for the
    close to complete, else abort it."""
    if not writer.transport.is_closing():
        writer.close()
    try:
        async with asyncio.timeout(CLOSE_GRACE_S):
            await writer.wait_closed()
        return
    except TimeoutError:
        writer.transport.abort()
    except Exception:  # closed with an error (reset, TLS alert): closed all the same
        return
    with contextlib.suppress(Exception):
        await writer.wait_closed()  # the abort completes on the next turn of the loop


def sidecar_client(
    url: str, sockets: OwnedSockets, *, connect_timeout: float, client_name: str | None = None
) -> aioredis.Redis:
    """A client for the sidecar's own use; close it with ``sockets.close(client)``."""
    return aioredis.Redis.from_url(
        url,
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=connect_timeout,
        socket_timeout=None,
        health_check_interval=0,
        client_name=client_name,
        redis_connect_func=sockets.on_connect,
    )


async def close_quietly(*closables: Any) -> None:
    """``aclose()`` each redis-py client or pubsub, ignoring connection errors; callers run it
    through :func:`run_to_end` so that a cancelled task still closes its sockets."""
    for closable in closables:
        with contextlib.suppress(RedisError, OSError):
            await closable.aclose()


async def run_to_end(cleanup: Awaitable[None]) -> None:
    """Await ``cleanup`` to its end even when the task is cancelled meanwhile, then re-raise.

    Shielding alone lets the cancelled task finish first; the clean-up would then still be
    running when its owner stops the event loop, and be cut there, leaving sockets open. The
    clean-ups passed here are bounded by their own timeouts; a second cancel still interrupts.
    """
    task = asyncio.ensure_future(cleanup)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
