"""SyncCheckpointer: the sync twin of :class:`sidecar.Checkpointer`, for threads.

One per process, shared by every thread: redis-py's connection pool hands each thread its own
connection, the breakers are guarded by a lock, and a call's budget is enforced by socket
timeouts derived from its deadline (:mod:`sidecar.sync.store`), since a blocked thread cannot
be cancelled. Everything else — ops, outcomes, breaker rules, spans, metrics — is the core's
(:mod:`sidecar.core`), the same code the async API runs.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry

from sidecar.budget import CircuitBreaker
from sidecar.config import CheckpointConfig
from sidecar.core.calls import CallRecorder, Cancel
from sidecar.core.ops import Op
from sidecar.errors import CheckpointError, CheckpointTimeout
from sidecar.models import CheckpointEvent, ContextLike
from sidecar.store import server_address
from sidecar.sync.store import SyncRedisClient, SyncStore, build_sync_client, is_bounded
from sidecar.telemetry import Instrumentation

if TYPE_CHECKING:
    from sidecar.sync.manager import SyncCheckpointManager
    from sidecar.sync.run import SyncResumableRun

T = TypeVar("T")
EventListener = Callable[[CheckpointEvent], Any]
logger = logging.getLogger("sidecar")


class SyncCheckpointer:
    """The sync entry point: one per process, shared by all its threads.

    ``redis`` is a ``redis.Redis`` or ``redis.cluster.RedisCluster``; it stays the caller's
    (closed by :meth:`close` only when built by :meth:`from_url` or ``close_client=True``).
    Build it with :func:`sidecar.sync.store.build_sync_client` (or ``from_url``) so that the
    budget bounds every socket operation; a client of your own bounds calls by its own socket
    timeout only (a warning says so).
    """

    def __init__(
        self,
        redis: SyncRedisClient,
        config: CheckpointConfig | None = None,
        *,
        registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        on_event: EventListener | None = None,
        close_client: bool = False,
    ) -> None:
        self.config = config if config is not None else CheckpointConfig()
        self.store = SyncStore(redis)
        if not is_bounded(redis):
            logger.warning(
                "this Redis client's connections do not follow the checkpoint budget: a call "
                "can block for its socket timeout. Build it with SyncCheckpointer.from_url or "
                "sidecar.sync.store.build_sync_client"
            )
        self._close_client = close_client
        self.telemetry = Instrumentation(
            registry=registry,
            tracer_provider=tracer_provider,
            budget_seconds=self.config.budget_seconds,
            server=server_address(redis),
            trace_identifiers=self.config.trace_identifiers,
        )
        self.calls = CallRecorder(
            self.config, self.telemetry, self.store.shard, _thread_timer, lock=threading.RLock()
        )
        self.on_event = on_event
        self._budget = self.config.budget_seconds

    @classmethod
    def from_url(
        cls,
        url: str | None = None,
        *,
        config: CheckpointConfig | None = None,
        cluster: bool | None = None,
        registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        on_event: EventListener | None = None,
    ) -> Self:
        """Build a SyncCheckpointer and its client (no I/O: connections open on first use).

        ``url`` defaults to ``config.redis_url``; ``cluster=True`` or a ``redis+cluster://``
        URL builds a ``RedisCluster`` client.
        """
        cfg = config if config is not None else CheckpointConfig()
        if url is not None:
            cfg = cfg.model_copy(update={"redis_url": url})
            type(cfg).model_validate(cfg.model_dump())  # re-check the new URL
        use_cluster = cfg.is_cluster if cluster is None else cluster
        client = build_sync_client(cfg.redis_url, cluster=use_cluster)
        return cls(
            client, cfg, registry=registry, tracer_provider=tracer_provider,
            on_event=on_event, close_client=True,
        )  # fmt: skip

    def manager(self, ctx: ContextLike) -> SyncCheckpointManager:
        """The seed's per-context manager (validates the identifiers now)."""
        from sidecar.sync.manager import SyncCheckpointManager

        return SyncCheckpointManager(self, ctx)

    def run(self, ctx: ContextLike, plan: Sequence[str] | None = None) -> SyncResumableRun:
        """A resumable run of ``ctx``: ``with cp.run(ctx, plan) as run: ...``."""
        from sidecar.sync.run import SyncResumableRun

        return SyncResumableRun(self.manager(ctx), plan)

    def attach(
        self, ctx: ContextLike, *, owner: str, fencing_token: int,
        plan: Sequence[str] | None = None,
    ) -> SyncResumableRun:  # fmt: skip
        """A run acquired earlier, by its owner token and fencing token."""
        from sidecar.sync.run import SyncResumableRun

        return SyncResumableRun(self.manager(ctx), plan, owner=owner, fencing_token=fencing_token)

    def connect(self, wait_s: float = 5.0) -> None:
        """Reach Redis now, outside any checkpoint's budget (optional; fails fast).

        Raises :class:`CheckpointUnavailable` or :class:`CheckpointTimeout`; either way the
        SyncCheckpointer stays usable.
        """
        try:
            self.store.connect(wait_s)
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

    @property
    def breaker(self) -> CircuitBreaker:
        return self.calls.breaker

    def breaker_for(self, slot: int) -> CircuitBreaker:
        return self.calls.breaker_for(slot)

    def execute(
        self,
        operation: str,
        db_operation: str,
        call: Callable[[], T],
        *,
        ids: tuple[str, str],
        slot: int | None = None,
        section: str | None = None,
        nbytes: int | None = None,
        measure: Callable[[Any], int | None] | None = None,
    ) -> tuple[T | None, CheckpointError | None]:
        """Run one bounded Redis call (``call`` must bound itself: :meth:`execute_op` does);
        return (result, None) or (None, outage), exactly as the async ``execute``."""
        tracked = self.calls.begin(
            operation, db_operation, ids=ids, slot=slot, section=section, nbytes=nbytes
        )
        if tracked.skipped is not None:
            return None, tracked.skipped
        token = otel_context.attach(trace.set_span_in_context(tracked.span))
        try:
            result = call()
        except BaseException as exc:
            return None, tracked.failed(exc)
        finally:
            otel_context.detach(token)
        tracked.succeeded(result, measure)
        return result, None

    def execute_op(self, op: Op[T]) -> tuple[T | None, CheckpointError | None]:
        """Send ``op``'s command within the budget; its reply parsed."""
        store, command, parse, measure, budget = (
            self.store, op.command, op.parse, op.measure, self._budget
        )  # fmt: skip
        size: int | None = None

        def call() -> T:
            nonlocal size
            reply = store.send(op.operation, command, budget)
            if measure is not None:
                size = measure(reply)
            return parse(reply)

        return self.execute(
            op.operation, command.db_operation, call, ids=op.ids, slot=op.slot,
            section=op.section, nbytes=op.nbytes,
            measure=None if measure is None else lambda _: size,
        )  # fmt: skip

    def perform(self, op: Op[T]) -> T:
        """Carry out ``op``: its result; on an outage its "nothing" (best effort) or the error
        (strict, or an op that always raises). Emits the op's event on success."""
        started = time.perf_counter()
        result, error = self.execute_op(op)
        if error is not None:
            if self.config.strict or op.always_raise:
                raise error
            return op.nothing
        if op.event is not None and self.on_event is not None and op.event_if(result):
            user, run = op.ids
            duration = time.perf_counter() - started
            self.emit(CheckpointEvent(op.event, user, run, op.section, duration))
        return result  # type: ignore[return-value]

    def reject(self, operation: str, error: CheckpointError, section: str | None = None) -> None:
        self.calls.reject(operation, error, section)

    def emit(self, event: CheckpointEvent) -> None:
        """Deliver an event to ``on_event`` in the calling thread; a listener that raises is
        logged, never propagated. A coroutine listener cannot be awaited here: it is closed
        and logged (give the sync API a plain function)."""
        listener = self.on_event
        if listener is None:
            return
        try:
            result = listener(event)
        except Exception:
            logger.exception("checkpoint event listener raised; the operation is unaffected")
            return
        if inspect.iscoroutine(result):
            result.close()
            logger.error("a SyncCheckpointer's on_event returned a coroutine: not awaited")


def _thread_timer(delay_s: float, fn: Callable[[], None]) -> Cancel:
    """The sync API's scheduler for the breaker's cooldown: a daemon timer thread."""
    timer = threading.Timer(delay_s, fn)
    timer.daemon = True
    timer.start()
    return timer.cancel
