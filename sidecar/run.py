"""ResumableRun: one attempt at a run, holding its lease, resuming finished sections.

::

    async with cp.run(ctx, plan=SECTIONS) as run:      # lease + restore: one EVALSHA
        for name in SECTIONS:
            await run.step(name, lambda: llm(name))     # restored, or produced and saved
    report = run.result()                               # the seed's result dict

Leaving the block normally deletes every key of the run (cleanup after success); leaving it by
an exception keeps the checkpoints for the next attempt and re-raises that exception, never
another one. Either way the lease is released, through owner-checked scripts only. The lease
carries a fencing token that only grows; saves of an attempt whose lease was taken over, or
whose run was finished, are refused atomically with :class:`LeaseLost`.

When the acquire cannot reach Redis (best-effort mode), the block still runs: the run is
*unconfirmed*, retries the acquire before each step, and saves nothing until it holds the
lease; :class:`LeaseHeld` if it then finds another attempt holding the run. The rules live in
:mod:`sidecar.core.runstate`; this module only awaits.

Servers that hold a lease across requests use the pieces directly: :meth:`ResumableRun.acquire`,
:meth:`~ResumableRun.save`, :meth:`~ResumableRun.renew`, :meth:`~ResumableRun.complete`,
:meth:`~ResumableRun.fail`, and ``cp.attach(ctx, owner=..., fencing_token=...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

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
from sidecar.manager import CheckpointManager
from sidecar.models import CheckpointEvent

logger = logging.getLogger("sidecar")
Produce = Callable[[], Any]
_OUTAGES = (CheckpointTimeout, CheckpointUnavailable)


class ResumableRun(RunView):
    """An attempt at one run: ``async with`` it, call :meth:`step` per section."""

    def __init__(
        self,
        manager: CheckpointManager,
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
        self._renewer: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        started = time.perf_counter()
        strict = self._cp.config.strict
        try:
            await self._acquire(release_on_outage=strict)
        except _OUTAGES as error:
            if strict:
                raise
            # it may have landed: then the lease is ours without our knowing; the next step's
            # acquire confirms it (same owner), and leaving the block releases it either way
            logger.warning("run starts unconfirmed (nothing restored yet): %s", error)
        self._state.started()
        self._after_acquire(started)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        await self._stop_renewing()
        if exc is not None:
            self._state.finished(False)
            await self._release()  # never replaces the exception: logged and counted
            return
        try:
            if self._state.lost:
                raise LeaseLost("another attempt took this run over; it did not complete here")
            await self._finish()
        except BaseException:
            self._state.finished(False)
            raise
        self._state.finished(True)

    # --- steps -------------------------------------------------------------------------------

    async def step(self, section: str, produce: Produce, *, model: Any = None) -> Any:
        """The section's checkpointed content if present, else ``produce()`` saved and returned.

        ``produce`` may be a coroutine function or a plain callable. ``model`` validates
        restored content into a type (a pydantic model, say) so both paths return the same kind.
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
            await self._retry_acquire()
            found, value = state.take_restored(name, model)
            if found:
                return value
        elif state.needs_mark(name):
            await self._cp.execute_op(state.mark(name))  # LeaseLost raises; outages don't matter
        result = produce()
        if inspect.isawaitable(result):
            result = await result
        if state.confirmed:
            await self._cp.perform(state.save(name, result))
        state.produced(name, result)
        return result

    # --- the pieces, for servers that hold a lease across requests ---------------------------

    async def acquire(self) -> None:
        """Take the lease and restore, in one round trip; counts the run as started.

        Raises :class:`LeaseHeld` (``retry_after_ms``), or the outage whatever ``strict``
        says; an acquire that failed or was cancelled after it may have landed is released.
        Restored sections are counted here (the caller uses them).
        """
        await self._acquire(release_on_outage=True)
        self._state.started()
        for name in self._state.restored:
            self._state.take_restored(name)

    async def save(self, section: str, content: Any) -> bool:
        """Save a produced section under this attempt's lease (fenced); raises LeaseLost."""
        name = validate_section(section)
        ok = await self._cp.perform(self._state.save(name, content))
        if ok:
            self._state.produced(name, content)
        return ok

    async def renew(self) -> None:
        """Extend the lease; raises :class:`LeaseLost` when the run is not ours any more."""
        if not await self._checked(self._state.renew()):
            raise LeaseLost("lease renewal refused: the run is not this attempt's any more")

    async def complete(self) -> None:
        """Cleanup after success (fenced): every key of the run is deleted."""
        await self._finish()
        self._state.finished(True)

    async def fail(self) -> None:
        """Give the lease back and keep the checkpoints for the next attempt."""
        self._state.finished(False)
        if not await self._checked(self._state.release()):
            raise LeaseLost("release refused: the lease is not this attempt's")

    # --- internals ---------------------------------------------------------------------------

    async def _checked(self, op: Op[bool]) -> bool:
        """The op's answer; on an outage True in best-effort mode (nothing was refused), the
        error in strict mode."""
        answer, error = await self._cp.execute_op(op)
        if error is not None:
            if self._cp.config.strict:
                raise error
            return True
        return bool(answer)

    async def _acquire(self, *, release_on_outage: bool) -> None:
        try:
            await self._cp.perform(self._state.acquire())
        except _OUTAGES as error:
            if release_on_outage and not isinstance(error, CheckpointRefused | CircuitOpen):
                await self._release()  # it may have landed: give it back (owner-checked)
            raise
        except asyncio.CancelledError:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._release())
            raise

    async def _retry_acquire(self) -> None:
        """An unconfirmed run tries again before a step; LeaseHeld if another attempt has it."""
        started = time.perf_counter()
        with contextlib.suppress(*_OUTAGES):
            await self._acquire(release_on_outage=False)
            self._after_acquire(started)

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
            self._renewer = asyncio.create_task(self._renew_forever())

    async def _stop_renewing(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None

    async def _renew_forever(self) -> None:
        interval = self._cp.config.lease_ttl_seconds / 3
        while not self._state.lost:
            await asyncio.sleep(interval)
            renewed, error = await self._cp.execute_op(self._state.renew())
            if error is None and not renewed:
                logger.warning("lease of a run was lost: another attempt took it or it ended")

    async def _release(self) -> None:
        """Owner-checked release; failures are logged and counted (execute), never raised."""
        await self._cp.execute_op(self._state.release())

    async def _finish(self) -> None:
        await self._cp.perform(self._state.finish())
