"""The bookkeeping around one bounded Redis call, shared by the async and the sync shell.

A shell does::

    call = recorder.begin(operation, db_operation, ids=..., slot=...)
    if call.skipped is not None:            # circuit open: no network at all
        ... the outage is call.skipped
    try:
        result = <send the command, bounded by the budget>
    except BaseException as exc:
        error = call.failed(exc)             # outage → returned; anything else re-raised
    else:
        call.succeeded(result)

and nothing else. Outcomes:

=========  ====================================================  =================
outcome    what happened                                          breaker
=========  ====================================================  =================
ok         Redis answered within the budget                       success
timeout    no answer within the budget                            failure
error      unreachable, cluster down: an outage                   failure
error      Redis answered with a refusal (OOM, NOPERM, ...)       success (it answers)
rejected   caller mistake or lease conflict; nothing written      success
corrupt    a stored value that does not decode or authenticate    success
skipped    circuit open: no network call was made                 (unchanged)
=========  ====================================================  =================

Refusals are Redis answering: they must not open the circuit, or a full Redis would make
reads (which still work under OOM) skip too.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.trace import Span

from sidecar import names
from sidecar.budget import CircuitBreaker
from sidecar.config import CheckpointConfig
from sidecar.errors import (
    CheckpointError,
    CheckpointRefused,
    CheckpointTimeout,
    CheckpointUnavailable,
    CircuitOpen,
    IntegrityError,
    SerializationError,
)
from sidecar.telemetry import Instrumentation, SpanAttributes

logger = logging.getLogger("sidecar")
Cancel = Callable[[], None]
Scheduler = Callable[[float, Callable[[], None]], Cancel]
"""``schedule(delay_s, fn)`` runs ``fn`` later (event loop timer or thread timer); returns
a function that cancels it."""


class Call:
    """One call in flight: its span, its breaker, and when it started."""

    __slots__ = (
        "_allowed", "_attrs", "_breaker", "_nbytes", "_op", "_rec", "_span", "_start", "skipped",
    )  # fmt: skip

    def __init__(
        self,
        recorder: CallRecorder,
        operation: str,
        span: Span,
        attrs: SpanAttributes | None,
        breaker: CircuitBreaker,
        nbytes: int | None,
    ) -> None:
        self._rec = recorder
        self._op = operation
        self._span = span
        self._attrs = attrs
        self._breaker = breaker
        self._nbytes = nbytes
        with recorder.lock:
            self._allowed = breaker.allow()
        self.skipped: CheckpointUnavailable | None = None
        if self._allowed is False:
            self.skipped = CircuitOpen(f"{operation}: circuit open after repeated failures")
            recorder.telemetry.finish(span, operation, names.SKIPPED, 0.0, nbytes, None, attrs)
        self._start = time.perf_counter()

    @property
    def span(self) -> Span:
        return self._span

    def succeeded(self, result: Any, measure: Callable[[Any], int | None] | None = None) -> None:
        with self._rec.lock:
            self._breaker.success()
        self._rec.outage_logged = False
        nbytes = measure(result) if measure is not None else self._nbytes
        self._finish(names.OK, nbytes, None)

    def failed(self, exc: BaseException) -> CheckpointError:
        """Record a failed call. Returns the outage (timeout, unreachable, refused) for the
        caller to raise or turn into "nothing"; re-raises anything else after recording it."""
        if isinstance(exc, TimeoutError):
            budget = self._rec.config.budget_ms
            exc = CheckpointTimeout(f"{self._op}: no answer within the {budget:g} ms budget")
        if isinstance(exc, CheckpointRefused):
            self._answered(names.ERROR, exc)
            self._rec.log_outage(exc)
            return exc
        if isinstance(exc, CheckpointTimeout | CheckpointUnavailable):
            with self._rec.lock:
                self._breaker.failure(probe=self._allowed is None)
            self._rec.log_outage(exc)
            outcome = names.TIMEOUT if isinstance(exc, CheckpointTimeout) else names.ERROR
            self._finish(outcome, self._nbytes, exc)
            return exc
        if isinstance(exc, SerializationError | IntegrityError):
            self._answered(names.CORRUPT, exc)
            raise exc
        if isinstance(exc, CheckpointError):  # lease conflicts: not an outage, always raised
            self._answered(names.REJECTED, exc)
            raise exc
        if self._allowed is None:  # a cancelled probe: let the next call probe instead
            with self._rec.lock:
                self._breaker.abandon_probe()
        self._finish(names.ERROR, self._nbytes, None)
        raise exc

    def _answered(self, outcome: str, exc: CheckpointError) -> None:
        with self._rec.lock:
            self._breaker.success()
        self._finish(outcome, self._nbytes, exc)

    def _finish(self, outcome: str, nbytes: int | None, error: BaseException | None) -> None:
        duration = time.perf_counter() - self._start
        self._rec.telemetry.finish(
            self._span, self._op, outcome, duration, nbytes, error, self._attrs
        )


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

    def begin(
        self,
        operation: str,
        db_operation: str,
        *,
        ids: tuple[str, str],
        slot: int | None = None,
        section: str | None = None,
        nbytes: int | None = None,
    ) -> Call:
        tele = self.telemetry
        span = tele.start_span(operation)
        attrs = (
            tele.describe(operation, db_operation, section, ids) if span.is_recording() else None
        )
        breaker = self.breaker if slot is None else self.breaker_for(slot)
        return Call(self, operation, span, attrs, breaker, nbytes)

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
