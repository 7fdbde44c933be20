"""SyncResumableRun: one attempt at a run from synchronous code (threads, Celery, scripts).

::

    with cp.run(ctx, plan=SECTIONS) as run:         # lease + restore: one EVALSHA
        for name in SECTIONS:
            run.step(name, lambda: llm(name))        # restored, or produced and saved
    report = run.result()

The same rules as :class:`sidecar.ResumableRun` (they live in :mod:`sidecar.core.runstate`):
cleanup after success, checkpoints kept after an exception (which is never replaced), fenced
saves, an unconfirmed run that saves nothing until it holds the lease. The lease is renewed by
a daemon thread every third of ``lease_ttl_seconds``, stopped when the block ends.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from sidecar.core.ops import Op
from sidecar.core.runstate import RunState, RunView
from sidecar.errors import (
    CheckpointRefused,
    CheckpointTimeout,
    CheckpointUnavailable,
    CircuitOpen,
    LeaseLost,
)
from sidecar.keys import validate_section
from sidecar.models import CheckpointEvent

if TYPE_CHECKING:
    from sidecar.sync.manager import SyncCheckpointManager

logger = logging.getLogger("sidecar")
_OUTAGES = (CheckpointTimeout, CheckpointUnavailable)


class SyncResumableRun(RunView):
    """An attempt at one run: ``with`` it, call :meth:`step` per section."""

    def __init__(
        self,
        manager: SyncCheckpointManager,
        plan: Sequence[str] | None = None,
        *,
        owner: str | None = None,
        fencing_token: int = 0,
    ) -> None:
        self.manager = manager
        self._cp = manager.checkpointer
        self._state = RunState(
            manager.verbs, self._cp.telemetry.metrics, list(plan) if plan else None,
            owner=owner, fencing_token=fencing_token,
        )  # fmt: skip
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> Self:
        started = time.perf_counter()
        strict = self._cp.config.strict
        try:
            self._acquire(release_on_outage=strict)
        except _OUTAGES as error:
            if strict:
                raise
            logger.warning("run starts unconfirmed (nothing restored yet): %s", error)
        self._state.started()
        self._after_acquire(started)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self._stop_renewing()
        if exc is not None:
            self._state.finished(False)
            self._cp.execute_op(self._state.release())  # never replaces the exception
            return
        try:
            if self._state.lost:
                raise LeaseLost("another attempt took this run over; it did not complete here")
            self._cp.perform(self._state.finish())
        except BaseException:
            self._state.finished(False)
            raise
        self._state.finished(True)

    def step(self, section: str, produce: Callable[[], Any], *, model: Any = None) -> Any:
        """The section's checkpointed content if present, else ``produce()`` saved and returned.

        ``model`` validates restored content into a type so both paths return the same kind.
        """
        name = validate_section(section)
        state = self._state
        found, value = state.take_restored(name, model)
        if found:
            return value
        if name in state.report:  # produced earlier in this attempt: never pay twice
            return state.report[name]
        if state.lost:
            raise LeaseLost("this attempt's lease was taken over; it may not produce sections")
        if not state.confirmed:
            started = time.perf_counter()
            with contextlib.suppress(*_OUTAGES):
                self._acquire(release_on_outage=False)
                self._after_acquire(started)
            found, value = state.take_restored(name, model)
            if found:
                return value
        elif state.needs_mark(name):
            self._cp.execute_op(state.mark(name))  # LeaseLost raises; outages don't matter
        result = produce()
        if state.confirmed:
            self._cp.perform(state.save(name, result))
        state.produced(name, result)
        return result

    # --- the pieces, for servers that hold a lease across requests ---------------------------

    def acquire(self) -> None:
        """See :meth:`sidecar.ResumableRun.acquire`."""
        self._acquire(release_on_outage=True)
        self._state.started()
        for name in self._state.restored:
            self._state.take_restored(name)

    def save(self, section: str, content: Any) -> bool:
        """Save a produced section under this attempt's lease (fenced); raises LeaseLost."""
        name = validate_section(section)
        ok = self._cp.perform(self._state.save(name, content))
        if ok:
            self._state.produced(name, content)
        return ok

    def renew(self) -> None:
        if not self._checked(self._state.renew()):
            raise LeaseLost("lease renewal refused: the run is not this attempt's any more")

    def complete(self) -> None:
        self._cp.perform(self._state.finish())
        self._state.finished(True)

    def fail(self) -> None:
        self._state.finished(False)
        if not self._checked(self._state.release()):
            raise LeaseLost("release refused: the lease is not this attempt's")

    # --- internals ---------------------------------------------------------------------------

    def _checked(self, op: Op[bool]) -> bool:
        answer, error = self._cp.execute_op(op)
        if error is not None:
            if self._cp.config.strict:
                raise error
            return True
        return bool(answer)

    def _acquire(self, *, release_on_outage: bool) -> None:
        try:
            self._cp.perform(self._state.acquire())
        except _OUTAGES as error:
            if release_on_outage and not isinstance(error, CheckpointRefused | CircuitOpen):
                self._cp.execute_op(self._state.release())  # it may have landed
            raise

    def _after_acquire(self, started: float) -> None:
        state = self._state
        if not state.confirmed:
            return
        if state.resumed:
            mgr = self.manager
            self._cp.emit(CheckpointEvent(
                "resumed", mgr.user_id, mgr.run_id, None, time.perf_counter() - started
            ))  # fmt: skip
        if self._renewer is None:
            self._renewer = threading.Thread(
                target=self._renew_forever, name="checkpoint-lease-renewal", daemon=True
            )
            self._renewer.start()

    def _stop_renewing(self) -> None:
        if self._renewer is not None:
            self._stop.set()
            self._renewer.join()
            self._renewer = None

    def _renew_forever(self) -> None:
        interval = self._cp.config.lease_ttl_seconds / 3
        while not self._state.lost and not self._stop.wait(interval):
            renewed, error = self._cp.execute_op(self._state.renew())
            if error is None and not renewed:
                logger.warning("lease of a run was lost: another attempt took it or it ended")
