"""The sidecar's own Redis clients (watchers, discovery, the start-up probe): built one way,
and closed for good, TLS sockets included.

Built one way: redis-py's retries are off (the callers own reconnection and backoff), and there
is no socket timeout. redis-py 8 defaults to 5 s, and with one it sends through
``asyncio.wait_for``, which on Python 3.11 can drop a cancellation: a watcher then outlives its
``task.cancel()``. Callers bound their commands with ``asyncio.timeout`` instead.

Closed for good: redis-py closes pub/sub connections without waiting, and on TLS that leaves
the socket open for a round trip; :func:`close_all` waits for it (see :mod:`sidecar.sockets`).
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

from sidecar.sockets import OwnedSockets


async def close_all(sockets: OwnedSockets, *closables: Any) -> None:
    """``aclose()`` each client or pub/sub quietly, then make sure every socket is shut."""
    await close_quietly(*closables)
    await sockets.shut()


def sidecar_client(
    url: str, sockets: OwnedSockets, *, connect_timeout: float, client_name: str | None = None
) -> aioredis.Redis:
    """A client for the sidecar's own use; close it with ``close_all(sockets, client)``."""
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
