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
whose run was completed since, are refused atomically with :class:`LeaseLost`.

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
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from sidecar.core.runstate import OUTAGES, may_have_landed
from sidecar.core.shell import RunBase
from sidecar.errors import CheckpointError
from sidecar.manager import CheckpointManager

if TYPE_CHECKING:
    from sidecar.checkpointer import Checkpointer

logger = logging.getLogger("sidecar")
Produce = Callable[[], Any]


class ResumableRun(RunBase[CheckpointManager]):
    """An attempt at one run: ``async with`` it, call :meth:`step` per section."""

    _renewer: asyncio.Task[None] | None = None

    @property
    def _cp(self) -> Checkpointer:
        return self.manager.checkpointer

    async def __aenter__(self) -> Self:
        started = time.perf_counter()
        error: CheckpointError | None = None
        try:
            await self._acquire(release_on_outage=self._cp.config.strict)
        except OUTAGES as outage:
            error = outage
        self.entered(error, self._cp.config.strict)
        self._after_acquire(started)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        await self._stop_renewing()
        if exc is not None:
            self._state.finished(False)
            await self._cp.execute_op(self._state.release())  # never replaces the exception
            return
        try:
            self._state.leaving()
            await self._cp.perform(self._state.finish())
        except BaseException:
            self._state.finished(False)
            raise
        self._state.finished(True)

    async def step(self, section: str, produce: Produce, *, model: Any = None) -> Any:
        """The section's checkpointed content if present, else ``produce()`` saved and returned.

        ``produce`` may be a coroutine function or a plain callable. ``model`` validates
        restored content into a type (a pydantic model, say) so both paths return the same kind.
        """
        name, done, value = self._state.begin_step(section, model)
        if not done:
            await self._prepare(name)
            done, value = self._state.take_restored(name, model)  # the acquire may restore it
        if done:
            return value
        value = produce()
        if inspect.isawaitable(value):
            value = await value
        await self._keep(name, value)
        return value

    # --- the pieces, for servers that hold a lease across requests ---------------------------

    async def acquire(self) -> None:
        """Take the lease and restore, in one round trip; counts the run as started.

        Raises :class:`LeaseHeld` (``retry_after_ms``), or the outage whatever ``strict``
        says; an acquire that failed or was cancelled after it may have landed is released.
        Restored sections are counted here (the caller uses them).
        """
        await self._acquire(release_on_outage=True)
        self._state.acquired_by_api()

    async def save(self, section: str, content: Any) -> bool:
        """Save a produced section under this attempt's lease (fenced); raises LeaseLost."""
        return bool(await self._keep(self._state.begin_step(section)[0], content))

    async def renew(self) -> None:
        """Extend the lease; raises :class:`LeaseLost` when the run is not ours any more."""
        self._state.check_renewed(await self._cp.execute_op(self._state.renew()))

    async def complete(self) -> None:
        """Cleanup after success (fenced): every key of the run is deleted."""
        await self._cp.perform(self._state.finish())
        self._state.finished(True)

    async def fail(self) -> None:
        """Give the lease back and keep the checkpoints for the next attempt."""
        self._state.finished(False)
        self._state.check_released(await self._cp.execute_op(self._state.release()))

    # --- internals ---------------------------------------------------------------------------

    async def _prepare(self, name: str) -> None:
        """Before producing: an unconfirmed run tries the acquire again (LeaseHeld if another
        attempt has the run); a step that needs it marks the section (LeaseLost if fenced)."""
        started = time.perf_counter()
        for op in self._state.preflight(name):
            with contextlib.suppress(*OUTAGES):
                await self._cp.perform(op)
        self._after_acquire(started)

    async def _keep(self, name: str, value: Any) -> bool | None:
        """Save a produced section (a confirmed run only) and count it."""
        saved = await self._cp.perform(self._state.save(name, value)) if self.confirmed else None
        self._state.produced(name, value)
        return saved

    async def _acquire(self, *, release_on_outage: bool) -> None:
        try:
            await self._cp.perform(self._state.acquire())
        except OUTAGES as error:
            if release_on_outage and may_have_landed(error):
                await self._cp.execute_op(self._state.release())
            raise
        except asyncio.CancelledError:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._cp.execute_op(self._state.release()))
            raise

    def _after_acquire(self, started: float) -> None:
        if self.confirmed_now(started) and self._renewer is None:
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
            self._state.renewed_in_background(await self._cp.execute_op(self._state.renew()))
