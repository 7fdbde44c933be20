"""The bookkeeping around one bounded Redis call, shared by the async and the sync shell.

A shell does::

    call = recorder.begin_op(op)            # breaker; circuit open: call.error is set
    if call.error is None:
        with call:                           # the outcome is recorded on leaving
            call.reply(<send op.command, calling call.sent once, bounded by the budget>)
    return call.result, call.error

and nothing else: leaving the ``with``, an outage becomes ``call.error`` (for the caller to
raise or turn into "nothing"); anything else propagates after it is recorded.

The span is dated from the call's start but built in :meth:`Call.sent`, which the store calls
once the command is on the wire when it writes to the connection itself (the direct path):
Redis works on the command while the SDK builds the span (~20-30 µs of a save's ~60 µs of
span work), instead of after it. On every other path (a cluster, a hooked
``execute_command``) the store calls it before sending, so that the span is current for a
hook's child spans. A call that fails before either gets its span when it is recorded.
Outcomes:

============  ====================================================  =================
outcome       what happened                                          breaker
============  ====================================================  =================
ok            Redis answered within the budget                       success
timeout       no answer within the budget                            failure
error         unreachable, cluster down: an outage                   failure
error         Redis answered with a refusal (OOM, NOPERM, ...)       success (it answers)
unreplicated  saved, but min_replicas / AOF fsync not acknowledged   success (it answers)
rejected      caller mistake or lease conflict; nothing written      success
corrupt       a stored value that does not decode or authenticate    success
skipped       circuit open: no network call was made                 (unchanged)
============  ====================================================  =================

Refusals are Redis answering: they must not open the circuit, or a full Redis would make
reads (which still work under OOM) skip too.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span

from sidecar import names
from sidecar.budget import CircuitBreaker
from sidecar.config import CheckpointConfig
from sidecar.core.ops import Op
from sidecar.errors import (
    CheckpointError,
    CheckpointRefused,
    CheckpointTimeout,
    CheckpointUnavailable,
    CircuitOpen,
    IntegrityError,
    NotReplicated,
    SerializationError,
)
from sidecar.telemetry import Instrumentation, SpanAttributes

logger = logging.getLogger("sidecar")
Cancel = Callable[[], None]
Scheduler = Callable[[float, Callable[[], None]], Cancel]
"""``schedule(delay_s, fn)`` runs ``fn`` later (event loop timer or thread timer); returns
a function that cancels it."""


class Call:
    """One call in flight: its span (once :meth:`sent`), its breaker, and when it started."""

    __slots__ = (
        "_allowed", "_breaker", "_op", "_parse", "_rec", "_request", "_sizes", "_span",
        "_start", "_start_ns", "_token", "error", "result",
    )  # fmt: skip

    def __init__(self, recorder: CallRecorder, op: Op[Any], breaker: CircuitBreaker) -> None:
        self._rec = recorder
        self._op = op.operation
        self._request = op
        self._parse = op.parse
        self._sizes = op.sizes
        self._span: Span | None = None
        self._breaker = breaker
        self._token: object = None
        self.result: Any = None
        self.error: CheckpointError | None = None
        self._start_ns = time.time_ns()
        if not breaker.is_open:  # closed: allow() would only say True (no lock, no state)
            self._allowed: bool | None = True
        else:
            with recorder.lock:
                self._allowed = breaker.allow()
        if self._allowed is False:
            self.error = CircuitOpen(f"{self._op}: circuit open after repeated failures")
            self._finish(names.SKIPPED, None, 0.0)
        self._start = time.perf_counter()

    def sent(self) -> None:
        """Build the call's span (with its request attributes, dated from the call's start)
        and make it current until the call is recorded. The store calls this once: after
        writing the command when it writes it itself, else before sending."""
        if self._span is None:
            self._span = self._rec.open_span(self._request, self._start_ns)
            # current (what trace.use_span does, without its generator: every checkpoint
            # runs this), for the child spans of a hook on redis-py's path
            self._token = otel_context.attach(trace.set_span_in_context(self._span))

    def reply(self, raw: Any) -> None:
        """The command's reply, parsed (a parser's error propagates; a load's parser adds up
        the sizes of what it opened)."""
        self.result = self._parse(raw)

    def __enter__(self) -> Call:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
        if exc is None:
            breaker = self._breaker
            if breaker.consecutive_failures or breaker.is_open:  # else success() changes nothing
                with self._rec.lock:
                    breaker.success()
            self._rec.outage_logged = False
            self._finish(names.OK, None)
            return False
        self.error = self._failed(exc)
        return self.error is not None  # an outage is returned, anything else propagates

    def _failed(self, exc: BaseException) -> CheckpointError | None:
        """Record a failed call; the outage (timeout, unreachable, refused), or None."""
        if isinstance(exc, TimeoutError):
            budget = self._rec.config.budget_ms
            exc = CheckpointTimeout(f"{self._op}: no answer within the {budget:g} ms budget")
        if isinstance(exc, NotReplicated):  # saved on the primary: Redis answered
            self._answered(names.UNREPLICATED, exc)
            self._rec.log_outage(exc)
            return exc
        if isinstance(exc, CheckpointRefused):
            self._answered(names.ERROR, exc)
            self._rec.log_outage(exc)
            return exc
        if isinstance(exc, CheckpointTimeout | CheckpointUnavailable):
            with self._rec.lock:
                self._breaker.failure(probe=self._allowed is None)
            self._rec.log_outage(exc)
            self._finish(names.TIMEOUT if isinstance(exc, CheckpointTimeout) else names.ERROR, exc)
            return exc
        if isinstance(exc, SerializationError | IntegrityError):
            self._answered(names.CORRUPT, exc)
        elif isinstance(exc, CheckpointError):  # lease conflicts: not an outage, always raised
            self._answered(names.REJECTED, exc)
        else:
            if self._allowed is None:  # a cancelled probe: let the next call probe instead
                with self._rec.lock:
                    self._breaker.abandon_probe()
            self._finish(names.ERROR, None)
        return None

    def _answered(self, outcome: str, exc: CheckpointError) -> None:
        with self._rec.lock:
            self._breaker.success()
        self._finish(outcome, exc)

    def _finish(
        self, outcome: str, error: BaseException | None, duration: float | None = None
    ) -> None:
        if duration is None:
            duration = time.perf_counter() - self._start
        span = self._span
        if span is None:  # failed or skipped before the command was sent
            span = self._span = self._rec.open_span(self._request, self._start_ns)
        sizes = self._sizes
        self._rec.telemetry.finish(
            span, self._op, outcome, duration,
            None if sizes is None else sizes.logical or None, error, None,
            None if sizes is None else sizes.stored,
        )  # fmt: skip


class CallRecorder:
    """Breakers (one per cluster shard) and telemetry of one Checkpointer.

    ``lock`` guards the breakers when several threads share the Checkpointer (sync API);
    the async API needs none (one event loop drives it) and passes a null context.
    """

    def __init__(
        self,
        config: CheckpointConfig,
        telemetry: Instrumentation,
        shard_of: Callable[[int], str],
        schedule: Scheduler,
        lock: contextlib.AbstractContextManager[Any] | None = None,
    ) -> None:
        self.config = config
        self.telemetry = telemetry
        self._shard_of = shard_of
        self._schedule = schedule
        self.lock: contextlib.AbstractContextManager[Any] = (
            lock if lock is not None else contextlib.nullcontext()
        )
        self._breakers: dict[str, CircuitBreaker] = {}
        self._skipping: set[str] = set()  # shards whose calls are being skipped now
        self._cooldowns: dict[str, Cancel] = {}
        self.breaker = self._new_breaker("")
        self.outage_logged = False

    def begin_op(self, op: Op[Any]) -> Call:
        """Start one call of ``op``: its shard's breaker (see :class:`Call`)."""
        breaker = self.breaker if op.slot is None else self.breaker_for(op.slot)
        return Call(self, op, breaker)

    def open_span(self, op: Op[Any], start_ns: int) -> Span:
        """The span of a call of ``op`` that started at ``start_ns`` (``time.time_ns``), with
        its request attributes."""
        tele = self.telemetry
        return tele.start_span(
            op.operation,
            start_ns,
            tele.describe(op.operation, op.command.db_operation, op.section, op.ids),
        )

    def reject(self, operation: str, error: CheckpointError, section: str | None = None) -> None:
        """Record a caller mistake (outcome ``rejected``); the caller then raises it."""
        span = self.telemetry.start_span(operation)
        attrs: SpanAttributes | None = None if section is None else {"checkpoint.section": section}
        self.telemetry.finish(span, operation, names.REJECTED, 0.0, None, error, attrs)

    def log_outage(self, error: CheckpointError) -> None:
        if not self.outage_logged:
            self.outage_logged = True
            logger.warning("checkpointing degraded: %s", error)

    def close(self) -> None:
        """A closed Checkpointer no longer holds the circuit gauge up."""
        for shard in list(self._skipping):
            self._set_skipping(shard, False)

    # --- circuit breakers: one per shard -----------------------------------------------------

    def breaker_for(self, slot: int) -> CircuitBreaker:
        """The breaker of the primary serving ``slot``: on a cluster, one shard failing over
        must not make calls to the healthy shards skip. A promoted replica is a new name, so
        it starts with a closed circuit."""
        shard = self._shard_of(slot)
        breaker = self._breakers.get(shard)
        if breaker is not None:
            return breaker
        with self.lock:
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
            cancel = self._cooldowns.pop(shard, None)
            if cancel is not None:
                cancel()
            self._cooldowns[shard] = self._schedule(
                self.config.breaker_cooldown_s, lambda: self._set_skipping(shard, False)
            )
            logger.warning(
                "checkpoint circuit open%s: %d consecutive failures; calls skipped for %.1f s",
                where, self._breakers[shard].consecutive_failures, self.config.breaker_cooldown_s,
            )  # fmt: skip
        else:
            logger.info("checkpoint circuit closed%s: Redis answers again", where)

    def _set_skipping(self, shard: str, skipping: bool) -> None:
        if not skipping:
            cancel = self._cooldowns.pop(shard, None)
            if cancel is not None:
                cancel()
        if skipping != (shard in self._skipping):
            if skipping:
                self._skipping.add(shard)
            else:
                self._skipping.discard(shard)
            self.telemetry.circuit_changed(skipping)
