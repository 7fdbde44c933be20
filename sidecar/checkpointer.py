"""Checkpointer: owns the Redis client, the config, the telemetry and the breakers, and runs
every checkpoint operation through one bounded, instrumented path (:meth:`Checkpointer.execute`).

Every operation is: breaker check (on a cluster, the breaker of the shard serving the run) →
span → one awaited Redis command inside ``asyncio.timeout(budget)`` → outcome, histogram,
budget counter, span status. A redis-py call
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

from sidecar import names
from sidecar.budget import CircuitBreaker
from sidecar.config import CheckpointConfig
from sidecar.errors import (
    CheckpointError,
    CheckpointTimeout,
    CheckpointUnavailable,
)
from sidecar.models import CheckpointEvent, ContextLike
from sidecar.sockets import OwnedSockets
from sidecar.store import RedisClient, Store, build_client, drops_cancellations, server_address
from sidecar.telemetry import Instrumentation, SpanAttributes

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
        self._breakers: dict[str, CircuitBreaker] = {}
        self._skipping: set[str] = set()  # shards whose calls are being skipped now
        self._cooldown_timers: dict[str, asyncio.TimerHandle] = {}
        self.breaker = self._new_breaker("")
        self.on_event = on_event
        self._budget = self.config.budget_seconds
        self._pending: set[asyncio.Task[Any]] = set()
        self._outage_logged = False

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
        for shard in list(self._skipping):  # a closed Checkpointer no longer holds the gauge up
            self._set_skipping(shard, False)
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

        Outages (timeout, unreachable, circuit open) come back as the error, for the caller to
        raise (strict) or turn into the seed's "nothing". Lease conflicts raised by ``call``
        propagate with outcome ``rejected``. ``slot`` (the run's hash slot on a cluster) picks
        the breaker of the shard that serves it.
        """
        tele = self.telemetry
        span = tele.start_span(operation)
        attrs = (
            tele.describe(operation, db_operation, section, ids) if span.is_recording() else None
        )
        breaker = self.breaker if slot is None else self.breaker_for(slot)
        allowed = breaker.allow()
        if allowed is False:
            err = CheckpointUnavailable(f"{operation}: circuit open after repeated failures")
            tele.finish(span, operation, names.SKIPPED, 0.0, nbytes, None, attrs)
            return None, err
        start = time.perf_counter()
        outcome = names.OK
        error: CheckpointError | None = None
        result: T | None = None
        try:
            # the span is current during the call (what trace.use_span does, without its
            # generator: this path runs on every checkpoint)
            token = otel_context.attach(trace.set_span_in_context(span))
            try:
                async with asyncio.timeout(self._budget):
                    result = await call()
            finally:
                otel_context.detach(token)
        except TimeoutError:
            outcome, error = (
                names.TIMEOUT,
                CheckpointTimeout(
                    f"{operation}: no answer within the {self.config.budget_ms:g} ms budget"
                ),
            )
        except CheckpointTimeout as exc:
            outcome, error = names.TIMEOUT, exc
        except CheckpointUnavailable as exc:
            outcome, error = names.ERROR, exc
        except CheckpointError as exc:  # lease conflicts: not an outage, always raised
            breaker.success()
            tele.finish(
                span, operation, names.REJECTED, time.perf_counter() - start, nbytes, exc, attrs
            )
            raise
        except BaseException:
            if allowed is None:
                breaker.abandon_probe()
            tele.finish(
                span, operation, names.ERROR, time.perf_counter() - start, nbytes, None, attrs
            )
            raise
        duration = time.perf_counter() - start
        if error is None:
            breaker.success()
            self._outage_logged = False
            if measure is not None:
                nbytes = measure(result)
        else:
            breaker.failure(probe=allowed is None)
            self._log_outage(error)
        tele.finish(span, operation, outcome, duration, nbytes, error, attrs)
        return result, error

    def reject(self, operation: str, error: CheckpointError, section: str | None = None) -> None:
        """Record a caller mistake (outcome ``rejected``); the caller then raises it."""
        span = self.telemetry.start_span(operation)
        attrs: SpanAttributes | None = None if section is None else {"checkpoint.section": section}
        self.telemetry.finish(span, operation, names.REJECTED, 0.0, None, error, attrs)

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

    def _log_outage(self, error: CheckpointError) -> None:
        if not self._outage_logged:
            self._outage_logged = True
            logger.warning("checkpointing degraded: %s", error)

    # --- circuit breakers: one per shard -----------------------------------------------------

    def breaker_for(self, slot: int) -> CircuitBreaker:
        """The breaker of the primary serving ``slot``: on a cluster, one shard failing over
        must not make calls to the healthy shards skip. A promoted replica is a new name, so
        it starts with a closed circuit."""
        shard = self.store.shard(slot)
        breaker = self._breakers.get(shard)
        return breaker if breaker is not None else self._new_breaker(shard)

    def _new_breaker(self, shard: str) -> CircuitBreaker:
        cfg = self.config
        breaker = CircuitBreaker(
            cfg.breaker_failures, cfg.breaker_cooldown_s,
            lambda is_open: self._breaker_changed(shard, is_open),
        )  # fmt: skip
        self._breakers[shard] = breaker
        return breaker

    def _breaker_changed(self, shard: str, is_open: bool) -> None:
        self._set_skipping(shard, is_open)
        where = f" for {shard}" if shard else ""
        if is_open:
            # The gauge says "calls are being skipped": true for one cooldown, after which the
            # next call goes through as a probe (even if none comes for a long time).
            loop = asyncio.get_running_loop()
            timer = self._cooldown_timers.pop(shard, None)
            if timer is not None:
                timer.cancel()
            self._cooldown_timers[shard] = loop.call_later(
                self.config.breaker_cooldown_s, self._set_skipping, shard, False
            )
            logger.warning(
                "checkpoint circuit open%s: %d consecutive failures; calls skipped for %.1f s",
                where, self._breakers[shard].consecutive_failures, self.config.breaker_cooldown_s,
            )  # fmt: skip
        else:
            logger.info("checkpoint circuit closed%s: Redis answers again", where)

    def _set_skipping(self, shard: str, skipping: bool) -> None:
        if not skipping:
            timer = self._cooldown_timers.pop(shard, None)
            if timer is not None:
                timer.cancel()
        if skipping != (shard in self._skipping):
            if skipping:
                self._skipping.add(shard)
            else:
                self._skipping.discard(shard)
            self.telemetry.circuit_changed(skipping)
