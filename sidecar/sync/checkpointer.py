"""SyncCheckpointer: the sync twin of :class:`sidecar.Checkpointer`, for threads.

One per process, shared by every thread: redis-py's connection pool hands each thread its own
connection, the breakers are guarded by a lock, and a call's budget is enforced by socket
timeouts derived from its deadline (:mod:`sidecar.sync.store`), since a blocked thread cannot
be cancelled. Everything else — ops, outcomes, breaker rules, spans, metrics, the factories of
managers and runs — is shared with the async API (:mod:`sidecar.core`).
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TypeVar

from sidecar.core.calls import Cancel
from sidecar.core.ops import Op
from sidecar.core.shell import CheckpointerBase
from sidecar.errors import CheckpointError, CheckpointTimeout
from sidecar.sync.manager import SyncCheckpointManager
from sidecar.sync.run import SyncResumableRun
from sidecar.sync.store import SyncRedisClient, SyncStore, build_sync_client, is_bounded

T = TypeVar("T")
logger = logging.getLogger("sidecar")


class SyncCheckpointer(CheckpointerBase[SyncCheckpointManager, SyncResumableRun]):
    """The sync entry point: one per process, shared by all its threads.

    ``redis`` is a ``redis.Redis`` or ``redis.cluster.RedisCluster``; it stays the caller's
    (closed by :meth:`close` only when built by :meth:`from_url` or ``close_client=True``).
    Build it with :meth:`from_url` (or :func:`sidecar.sync.store.build_sync_client`) so that
    the budget bounds every socket operation; a client of your own is bounded by its socket
    timeout only (a warning says so). Event listeners run in the calling thread.
    """

    manager_class = SyncCheckpointManager
    run_class = SyncResumableRun
    store_class = SyncStore
    store: SyncStore
    shared_by_threads = True

    @staticmethod
    def schedule(delay_s: float, fn: Callable[[], None]) -> Cancel:
        """The breaker's cooldown timer: a daemon timer thread."""
        timer = threading.Timer(delay_s, fn)
        timer.daemon = True
        timer.start()
        return timer.cancel

    @classmethod
    def build_client(cls, url: str, cluster: bool) -> tuple[SyncRedisClient, dict[str, Any]]:
        return build_sync_client(url, cluster=cluster), {}

    def check_client(self, redis: Any) -> None:
        if not is_bounded(redis):
            logger.warning(
                "this Redis client's connections do not follow the checkpoint budget: a call "
                "can block for its socket timeout. Build it with SyncCheckpointer.from_url or "
                "sidecar.sync.store.build_sync_client"
            )

    def connect(self, wait_s: float = 5.0, *, connections: int = 1) -> None:
        """Reach Redis now, outside any checkpoint's budget (optional; fails fast), opening
        ``connections`` pooled connections, as :meth:`sidecar.Checkpointer.connect` does.

        Raises :class:`CheckpointUnavailable` or :class:`CheckpointTimeout`; either way the
        SyncCheckpointer stays usable.
        """
        try:
            self.store.connect(wait_s, connections)
        except CheckpointTimeout as exc:
            raise CheckpointTimeout(f"connect: no answer from Redis within {wait_s:g} s") from exc

    def close(self) -> None:
        """Close an owned client; a closed SyncCheckpointer no longer holds the gauge up."""
        self.calls.close()
        if self._close_client:
            self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.close()

    # --- the one path every operation takes -------------------------------------------------

    def execute_op(self, op: Op[T]) -> tuple[T | None, CheckpointError | None]:
        """Send ``op``'s command with socket timeouts from the budget; (result, None) or
        (None, outage), exactly as the async ``execute_op``."""
        call = self.calls.begin_op(op)
        if call.error is None:
            with call:
                call.reply(self.store.send(op.operation, op.command, self._budget, call.sent))
        return call.result, call.error

    def perform(self, op: Op[T]) -> T:
        """Carry out ``op``: see :meth:`~sidecar.core.shell.CheckpointerBase.settle`."""
        started = time.perf_counter()
        return self.settle(op, started, *self.execute_op(op))

    def listener_returned(self, result: Any) -> None:
        """A coroutine listener cannot be awaited in a thread: closed and logged."""
        if inspect.iscoroutine(result):
            result.close()
            logger.error("a SyncCheckpointer's on_event returned a coroutine: not awaited")
