"""ResumableRun: one attempt at a run, holding its lease, resuming finished sections.

::

    async with cp.run(ctx, plan=SECTIONS) as run:      # lease + restore: one EVALSHA
        for name in SECTIONS:
            await run.step(name, lambda: llm(name))     # restored, or produced and saved
    report = run.result()                               # the seed's result dict

Leaving the block normally deletes every key of the run (cleanup after success); leaving it by
an exception keeps the checkpoints for the next attempt and re-raises. Either way the lease is
released. The lease carries a fencing token that grows with every acquisition; saves made
through a run whose lease was taken over are refused atomically with :class:`LeaseLost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

from sidecar import codec, lua
from sidecar.errors import LeaseHeld, LeaseLost
from sidecar.keys import validate_section
from sidecar.manager import CheckpointManager, flat_pairs

logger = logging.getLogger("sidecar")
Produce = Callable[[], Any]


class ResumableRun:
    """An attempt at one run: ``async with`` it, call :meth:`step` per section."""

    def __init__(self, manager: CheckpointManager, plan: Sequence[str] | None = None) -> None:
        self.manager = manager
        self.plan: list[str] = [validate_section(s) for s in plan] if plan else []
        self.resumed = False
        self.restored: dict[str, Any] = {}
        self.fencing_token = 0
        self._owner = secrets.token_hex(16)
        self._degraded = False
        self._lost = False
        self._report: dict[str, Any] = {}
        self._restored_used = 0
        self._success = False
        self._renewer: asyncio.Task[None] | None = None
        self._cp = manager.checkpointer

    @property
    def remaining(self) -> list[str]:
        """Plan sections not yet restored or produced, in plan order."""
        return [s for s in self.plan if s not in self.restored and s not in self._report]

    @property
    def lease_lost(self) -> bool:
        return self._lost

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        cfg = self._cp.config
        mgr = self.manager
        args = (self._owner, cfg.lease_ttl_ms, cfg.ttl_ms, len(self.plan))
        store = self._cp.store

        async def call() -> Any:
            reply = await store.run_script(lua.ACQUIRE_LEASE, mgr.keys.all, args)
            if int(reply[0]) != 1:
                raise LeaseHeld(
                    f"run is held by another attempt (lease expires in {int(reply[1])} ms)"
                )
            return reply

        started = time.perf_counter()
        reply, error = await self._cp.execute(
            "lease_acquire", "EVALSHA", call, ids=(mgr.user_id, mgr.run_id), slot=mgr.slot
        )
        if error is not None:
            if cfg.strict:
                raise error
            # Best effort: run the block anyway, restoring nothing, saving without a lease.
            self._degraded = True
            logger.warning("run starts without checkpoints (nothing restored): %s", error)
        else:
            assert reply is not None
            self.fencing_token = int(reply[1])
            self.restored = {name: codec.load(name, raw) for name, raw in flat_pairs(reply[2])}
            self.resumed = bool(self.restored)
            self._renewer = asyncio.create_task(self._renew_forever())
        metrics = self._cp.telemetry.metrics
        metrics.runs_started.labels("resumed" if self.resumed else "fresh").inc()
        if self.resumed:
            mgr._event("resumed", None, started)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        metrics = self._cp.telemetry.metrics
        if exc is not None:
            metrics.runs_finished.labels("failed").inc()
            if not self._degraded:
                await self._release()
            return
        try:
            if self._lost:
                raise LeaseLost("another attempt took this run over; it did not complete here")
            if self._degraded:
                await self.manager.cleanup()
            else:
                await self._finish()
        except BaseException:
            metrics.runs_finished.labels("failed").inc()
            raise
        metrics.runs_finished.labels("completed").inc()
        self._success = True

    # --- steps -------------------------------------------------------------------------------

    async def step(self, section: str, produce: Produce, *, model: Any = None) -> Any:
        """The section's checkpointed content if present, else ``produce()`` saved and returned.

        ``produce`` may be a coroutine function or a plain callable. ``model`` validates
        restored content into a type (a pydantic model, say) so both paths return the same kind.
        """
        name = validate_section(section)
        metrics = self._cp.telemetry.metrics
        if name in self.restored:
            value = self.restored[name]
            if model is not None:
                value = codec.load(name, codec.dump(name, value, 1 << 62), model)
            if name not in self._report:
                self._restored_used += 1
                metrics.sections.labels("restored").inc()
            self._report[name] = value
            return value
        if name in self._report:  # produced earlier in this attempt: never pay twice
            return self._report[name]
        if self._lost:
            raise LeaseLost("this attempt's lease was taken over; it may not produce sections")
        await self._mark(name)
        result = produce()
        if inspect.isawaitable(result):
            result = await result
        owner = "" if self._degraded else self._owner
        try:
            await self.manager._save(name, result, owner=owner, fence=self.fencing_token)
        except LeaseLost:
            self._lost = True
            raise
        metrics.sections.labels("produced").inc()
        self._report[name] = result
        return result

    def result(self) -> dict[str, Any]:
        """The seed's result: success, report (sections in order), checkpoints_used, resumed."""
        order = {name: i for i, name in enumerate(self.plan)}
        report = dict(sorted(self._report.items(), key=lambda kv: order.get(kv[0], len(order))))
        return {
            "success": self._success,
            "report": report,
            "checkpoints_used": self.resumed,
            "resumed_sections": self._restored_used,
        }

    # --- lease bookkeeping -------------------------------------------------------------------

    async def _mark(self, name: str) -> None:
        """Record the section in progress; bookkeeping only, so outages never raise here."""
        if self._degraded:
            return
        mgr, store, cfg = self.manager, self._cp.store, self._cp.config
        args = (name, self._owner, cfg.ttl_ms)
        await self._cp.execute(
            "mark_in_progress", "EVALSHA",
            lambda: store.run_script(lua.MARK_IN_PROGRESS, mgr.keys.all, args),
            ids=(mgr.user_id, mgr.run_id), slot=mgr.slot, section=name,
        )  # fmt: skip

    async def _renew_forever(self) -> None:
        cfg, mgr, store = self._cp.config, self.manager, self._cp.store
        interval = cfg.lease_ttl_seconds / 3
        args = (self._owner, cfg.lease_ttl_ms)
        while not self._lost:
            await asyncio.sleep(interval)
            reply, error = await self._cp.execute(
                "lease_renew", "EVALSHA",
                lambda: store.run_script(lua.RENEW_LEASE, (mgr.keys.lease,), args),
                ids=(mgr.user_id, mgr.run_id), slot=mgr.slot,
            )  # fmt: skip
            if error is None and not int(reply or 0):
                # expired during an outage; the next save re-takes it if nobody else did
                logger.warning("lease of a run expired before renewal; will re-take on save")

    async def _release(self) -> None:
        mgr, store = self.manager, self._cp.store
        owner = self._owner
        _, error = await self._cp.execute(
            "lease_release", "EVALSHA",
            lambda: store.run_script(lua.RELEASE_LEASE, mgr.keys.all[1:], (owner,)),
            ids=(mgr.user_id, mgr.run_id), slot=mgr.slot,
        )  # fmt: skip
        if error is not None and self._cp.config.strict:
            raise error

    async def _finish(self) -> None:
        mgr, store = self.manager, self._cp.store
        args = (self._owner, self.fencing_token)
        started = time.perf_counter()

        async def call() -> None:
            if not int(await store.run_script(lua.FINISH_RUN, mgr.keys.all, args)):
                raise LeaseLost("cleanup refused: another attempt has taken over this run")

        _, error = await self._cp.execute(
            "cleanup", "EVALSHA", call, ids=(mgr.user_id, mgr.run_id), slot=mgr.slot
        )
        if error is not None:
            if self._cp.config.strict:
                raise error
            return
        mgr._event("cleaned", None, started)
