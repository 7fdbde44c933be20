"""The sockets a client's connections opened, so that closing the client leaves none open.

redis-py closes a connection without waiting for the close in two cases: ``PubSub.aclose()``,
and any connection whose read was interrupted (a budget timeout, a cancel), which it drops with
``disconnect(nowait=True)``. On plain TCP the socket then closes on the next turn of the event
loop. On TLS, closing is a round trip with the server (close_notify both ways): the socket stays
open until the server answers, and if the event loop stops first (an application shutting down
right after closing its client, a test ending) it is never closed and the garbage collector
reports it.

:class:`OwnedSockets` is given to redis-py as the connection callback (``redis_connect_func``):
it records each connection's transport as it connects (weakly: a closed transport is
forgotten), and :meth:`OwnedSockets.shut` waits briefly for those still open, then aborts them.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

CLOSE_GRACE_S = 0.5  # a TLS close handshake takes one round trip; this is many


def _is_open(transport: asyncio.WriteTransport) -> bool:
    try:
        sock = transport.get_extra_info("socket")
    except AttributeError:  # a TLS transport closed twice has let go of its protocol
        return False
    return sock is not None and sock.fileno() != -1


class OwnedSockets:
    """Transports of one client's connections; :meth:`shut` after closing the client."""

    def __init__(self) -> None:
        self._transports: weakref.WeakSet[asyncio.WriteTransport] = weakref.WeakSet()

    async def on_connect(self, connection: Any) -> None:
        """redis-py's ``redis_connect_func``: record the transport, then the usual handshake."""
        # redis-py has no public accessor for a connection's stream; without it (another
        # redis-py), closing simply falls back to redis-py's own behaviour
        writer = getattr(connection, "_writer", None)
        if isinstance(writer, asyncio.StreamWriter):
            self._transports.add(writer.transport)
        await connection.on_connect()

    async def shut(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """Close every recorded socket still open: wait up to ``grace_s`` for the closes under
        way (TLS), close any nobody closed, and abort what is left."""
        pending = [t for t in list(self._transports) if _is_open(t)]
        for transport in pending:
            if not transport.is_closing():
                transport.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while pending and loop.time() < deadline:
            await asyncio.sleep(0.01)
            pending = [t for t in pending if _is_open(t)]
        for transport in pending:
            transport.abort()
        if pending:
            await asyncio.sleep(0)  # an abort closes the socket on the next turn of the loop
            await asyncio.sleep(0)
