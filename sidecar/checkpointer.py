"""Checkpointer: owns the Redis client, the config, the telemetry and the breakers, and runs
every checkpoint operation through one bounded, instrumented path (:meth:`Checkpointer.execute`).

Every operation is: breaker check (on a cluster, the breaker of the shard serving the run) →
span → one awaited Redis command inside ``asyncio.timeout(budget)`` → outcome, histogram,
budget counter, span status. All of that but the await lives in the I/O-free core
(:mod:`sidecar.core`), shared with the sync API. A redis-py call
cancelled by the timeout drops its connection rather than leaving a half-read reply in the
pool, so the timeout is a sound way to enforce the budget; clients built by
:meth:`Checkpointer.from_url` have redis-py's own retries off so that they cannot eat it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TypeVar

from sidecar.core.calls import Cancel
from sidecar.core.ops import Op
from sidecar.core.shell import CheckpointerBase
from sidecar.errors import CheckpointError, CheckpointTimeout
from sidecar.manager import CheckpointManager
from sidecar.run import ResumableRun
from sidecar.sockets import OwnedSockets
from sidecar.store import RedisClient, Store, build_client, drops_cancellations

T = TypeVar("T")
logger = logging.getLogger("sidecar")


class Checkpointer(CheckpointerBase[CheckpointManager, ResumableRun]):
    """The entry point: one per application (and event loop), shared by all its tasks.

    ``redis`` is a ``redis.asyncio.Redis`` or ``RedisCluster`` client; it stays the caller's
    (closed by :meth:`aclose` only when built by :meth:`from_url` or ``close_client=True``).
    ``registry`` and ``tracer_provider`` default to prometheus_client's and OpenTelemetry's
    global ones; pass your own to keep figures apart. ``manager(ctx)``, ``run(ctx, plan)`` and
    ``attach(ctx, owner=..., fencing_token=...)`` come from
    :class:`~sidecar.core.shell.CheckpointerBase`.
    """

    manager_class = CheckpointManager
    run_class = ResumableRun
    store_class = Store
    store: Store
    _pending: set[asyncio.Task[Any]] | None = None

    @staticmethod
    def schedule(delay_s: float, fn: Callable[[], None]) -> Cancel:
        """The breaker's cooldown timer: a timer on the running loop."""
        return asyncio.get_running_loop().call_later(delay_s, fn).cancel

    @classmethod
    def build_client(cls, url: str, cluster: bool) -> tuple[RedisClient, dict[str, Any]]:
        sockets = None if cluster else OwnedSockets()  # closing then waits for TLS closes
        return build_client(url, cluster=cluster, sockets=sockets), {"sockets": sockets}

    def check_client(self, redis: Any) -> None:
        if drops_cancellations(redis):
            logger.warning(
                "this Redis client has a socket timeout, so redis-py sends through "
                "asyncio.wait_for, which on Python 3.11 can drop a cancellation: the budget or "
                "your task.cancel() may then be lost. Build it with socket_timeout=None (the "
                "budget bounds every call), or use Checkpointer.from_url"
            )

    async def connect(self, wait_s: float = 5.0, *, connections: int = 1) -> None:
        """Reach Redis now, outside any checkpoint's budget. Optional.

        Without it, the first checkpoint call opens the connection (and, on a cluster, discovers
        the nodes) inside its own budget: about 100 ms for a TLS cluster here, enough for the
        very first call to time out. Call it at start-up to pay that once, and to fail fast:
        raises :class:`CheckpointUnavailable` (unreachable, refused) or
        :class:`CheckpointTimeout` (no answer within ``wait_s`` seconds). Either way the
        Checkpointer stays usable; later calls keep trying, best effort.

        ``connections``: how many pooled connections to open to each primary — as many as
        calls you expect in flight at once. A cold connection costs several round trips
        (HELLO, CLIENT SETINFO): 64 opened by a burst of calls took 50-90 ms here, most of a
        100 ms budget, and calls that time out drop their connection, so a cold burst can
        open the circuit.
        """
        try:
            async with asyncio.timeout(wait_s):
                await self.store.connect(connections)
        except TimeoutError as exc:
            raise CheckpointTimeout(f"connect: no answer from Redis within {wait_s:g} s") from exc

    async def aclose(self) -> None:
        """Wait briefly for pending async listeners, then close an owned client."""
        if self._pending:
            await asyncio.wait(self._pending, timeout=1.0)
        self.calls.close()
        if self._close_client:
            await self.store.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        await self.aclose()

    # --- the one path every operation takes -------------------------------------------------

    async def execute_op(self, op: Op[T]) -> tuple[T | None, CheckpointError | None]:
        """Send ``op``'s command within ``asyncio.timeout(budget)``; (result, None) or
        (None, outage). Lease conflicts and undecodable values propagate (outcomes
        ``rejected``, ``corrupt``)."""
        call = self.calls.begin_op(op)
        if call.error is None:
            with call:
                async with asyncio.timeout(self._budget):
                    call.reply(
                        await self.store.send(op.operation, op.command, self._budget, call.sent)
                    )
        return call.result, call.error

    async def perform(self, op: Op[T]) -> T:
        """Carry out ``op``: see :meth:`~sidecar.core.shell.CheckpointerBase.settle`."""
        started = time.perf_counter()
        result, error = await self.execute_op(op)
        return self.settle(op, started, result, error)

    def listener_returned(self, result: Any) -> None:
        """An async listener's coroutine runs as a task (awaited briefly by :meth:`aclose`)."""
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            if self._pending is None:
                self._pending = set()
            self._pending.add(task)
            task.add_done_callback(self._listener_done)

    def _listener_done(self, task: asyncio.Task[Any]) -> None:
        if self._pending is not None:
            self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "checkpoint event listener raised; the operation is unaffected",
                exc_info=task.exception(),
            )
