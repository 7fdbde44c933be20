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
from collections.abc import Awaitable, Callable, Sequence
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
from sidecar.sockets import OwnedSockets
from sidecar.store import RedisClient, Store, build_client, drops_cancellations, server_address
from sidecar.telemetry import Instrumentation

if TYPE_CHECKING:
    from sidecar.manager import CheckpointManager
    from sidecar.run import ResumableRun

T = TypeVar("T")
EventListener = Callable[[CheckpointEvent], Any]
logger = logging.getLogger("sidecar")


class Checkpointer:
    """The entry point: one per application (and event loop), shared by all its tasks.

    ``redis`` is a ``redis.asyncio.Redis`` or ``RedisCluster`` client; it stays the caller's
    (closed by :meth:`aclose` only when built by :meth:`from_url` or ``close_client=True``).
    ``registry`` and ``tracer_provider`` default to prometheus_client's and OpenTelemetry's
    global ones; pass your own to keep figures apart.
    """

    def __init__(
        self,
        redis: RedisClient,
        config: CheckpointConfig | None = None,
        *,
        registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        on_event: EventListener | None = None,
        close_client: bool = False,
    ) -> None:
        self.config = config if config is not None else CheckpointConfig()
        self.store = Store(redis)
        if drops_cancellations(redis):
            logger.warning(
                "this Redis client has a socket timeout, so redis-py sends through "
                "asyncio.wait_for, which on Python 3.11 can drop a cancellation: the budget or "
                "your task.cancel() may then be lost. Build it with socket_timeout=None (the "
                "budget bounds every call), or use Checkpointer.from_url"
            )
        self._close_client = close_client
        self.telemetry = Instrumentation(
            registry=registry,
            tracer_provider=tracer_provider,
            budget_seconds=self.config.budget_seconds,
            server=server_address(redis),
            trace_identifiers=self.config.trace_identifiers,
        )
        self.calls = CallRecorder(self.config, self.telemetry, self.store.shard, _call_later)
        self.on_event = on_event
        self._budget = self.config.budget_seconds
        self._pending: set[asyncio.Task[Any]] = set()

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
        """Build a Checkpointer and its client (no I/O: connections open on first use).

        ``url`` defaults to ``config.redis_url``. ``cluster=True`` or a ``redis+cluster://``
        URL builds a ``RedisCluster`` client.
        """
        cfg = config if config is not None else CheckpointConfig()
        if url is not None:
            cfg = cfg.model_copy(update={"redis_url": url})
            type(cfg).model_validate(cfg.model_dump())  # re-check the new URL
        use_cluster = cfg.is_cluster if cluster is None else cluster
        sockets = None if use_cluster else OwnedSockets()
        client = build_client(cfg.redis_url, cluster=use_cluster, sockets=sockets)
        checkpointer = cls(
            client, cfg, registry=registry, tracer_provider=tracer_provider,
            on_event=on_event, close_client=True,
        )  # fmt: skip
        checkpointer.store.sockets = sockets  # closing then waits for TLS closes
        return checkpointer

    def manager(self, ctx: ContextLike) -> CheckpointManager:
        """The seed's per-context manager (validates the identifiers now)."""
        from sidecar.manager import CheckpointManager

        return CheckpointManager(self, ctx)

    def run(self, ctx: ContextLike, plan: Sequence[str] | None = None) -> ResumableRun:
        """A resumable run of ``ctx``: ``async with cp.run(ctx, plan) as run: ...``."""
        from sidecar.run import ResumableRun

        return ResumableRun(self.manager(ctx), plan)

    def attach(
        self, ctx: ContextLike, *, owner: str, fencing_token: int,
        plan: Sequence[str] | None = None,
    ) -> ResumableRun:  # fmt: skip
        """A run acquired earlier (by another request of a server, say), by its owner token
        and fencing token: its saves, renewals and finish are fenced exactly as the original's.
        """
        from sidecar.run import ResumableRun

        return ResumableRun(self.manager(ctx), plan, owner=owner, fencing_token=fencing_token)

    async def connect(self, wait_s: float = 5.0) -> None:
        """Reach Redis now, outside any checkpoint's budget. Optional.

        Without it, the first checkpoint call opens the connection (and, on a cluster, discovers
        the nodes) inside its own budget: about 100 ms for a TLS cluster here, enough for the
        very first call to time out. Call it at start-up to pay that once, and to fail fast:
        raises :class:`CheckpointUnavailable` (unreachable, refused) or
        :class:`CheckpointTimeout` (no answer within ``wait_s`` seconds). Either way the
        Checkpointer stays usable; later calls keep trying, best effort.
        """
        try:
            async with asyncio.timeout(wait_s):
                await self.store.connect()
        except TimeoutError as exc:
            raise CheckpointTimeout(f"connect: no answer from Redis within {wait_s:g} s") from exc

    async def aclose(self) -> None:
        """Wait briefly for pending async listeners, then close an owned client."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=1.0)
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

    @property
    def breaker(self) -> CircuitBreaker:
        """The breaker of a single server (on a cluster: of calls made before discovery)."""
        return self.calls.breaker

    def breaker_for(self, slot: int) -> CircuitBreaker:
        return self.calls.breaker_for(slot)

    async def execute(
        self,
        operation: str,
        db_operation: str,
        call: Callable[[], Awaitable[T]],
        *,
        ids: tuple[str, str],
        slot: int | None = None,
        section: str | None = None,
        nbytes: int | None = None,
        measure: Callable[[Any], int | None] | None = None,
    ) -> tuple[T | None, CheckpointError | None]:
        """Run one Redis call within the budget; return (result, None) or (None, outage).

        Outages (timeout, unreachable, refused, circuit open) come back as the error, for the
        caller to raise (strict) or turn into the seed's "nothing". Lease conflicts and
        undecodable values raised by ``call`` propagate (outcomes ``rejected``, ``corrupt``).
        ``slot`` (the run's hash slot on a cluster) picks the breaker of its shard.
        """
        tracked = self.calls.begin(
            operation, db_operation, ids=ids, slot=slot, section=section, nbytes=nbytes
        )
        if tracked.skipped is not None:
            return None, tracked.skipped
        # the span is current during the call (what trace.use_span does, without its
        # generator: this path runs on every checkpoint)
        token = otel_context.attach(trace.set_span_in_context(tracked.span))
        try:
            async with asyncio.timeout(self._budget):
                result = await call()
        except BaseException as exc:
            return None, tracked.failed(exc)
        finally:
            otel_context.detach(token)
        tracked.succeeded(result, measure)
        return result, None

    async def execute_op(self, op: Op[T]) -> tuple[T | None, CheckpointError | None]:
        """Send ``op``'s command through :meth:`execute`; its reply parsed within the budget."""
        store, command, parse, measure = self.store, op.command, op.parse, op.measure
        size: int | None = None

        async def call() -> T:
            nonlocal size
            reply = await store.send(op.operation, command)
            if measure is not None:
                size = measure(reply)
            return parse(reply)

        return await self.execute(
            op.operation, command.db_operation, call, ids=op.ids, slot=op.slot,
            section=op.section, nbytes=op.nbytes,
            measure=None if measure is None else lambda _: size,
        )  # fmt: skip

    async def perform(self, op: Op[T]) -> T:
        """Carry out ``op``: its result; on an outage, its "nothing" (best effort) or the
        error (strict mode, or an op that always raises). Emits the op's event on success."""
        started = time.perf_counter()
        result, error = await self.execute_op(op)
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
        """Record a caller mistake (outcome ``rejected``); the caller then raises it."""
        self.calls.reject(operation, error, section)

    def emit(self, event: CheckpointEvent) -> None:
        """Deliver an event to ``on_event``; a listener that raises is logged, never propagated."""
        listener = self.on_event
        if listener is None:
            return
        try:
            result = listener(event)
        except Exception:
            logger.exception("checkpoint event listener raised; the operation is unaffected")
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._pending.add(task)
            task.add_done_callback(self._listener_done)

    def _listener_done(self, task: asyncio.Task[Any]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "checkpoint event listener raised; the operation is unaffected",
                exc_info=task.exception(),
            )


def _call_later(delay_s: float, fn: Callable[[], None]) -> Cancel:
    """The async API's scheduler for the breaker's cooldown: a timer on the running loop."""
    return asyncio.get_running_loop().call_later(delay_s, fn).cancel
