"""SyncResumableRun: one attempt at a run from synchronous code (threads, Celery, scripts).

::

    with cp.run(ctx, plan=SECTIONS) as run:         # lease + restore: one EVALSHA
        for name in SECTIONS:
            run.step(name, lambda: llm(name))        # restored, or produced and saved
    report = run.result()

The same rules as :class:`sidecar.ResumableRun` (they live in :mod:`sidecar.core.runstate`):
cleanup after success, checkpoints kept after an exception (which is never replaced), fenced
saves, an unconfirmed run that saves nothing until it holds the lease. The lease is renewed by
a daemon thread every third of ``lease_ttl_seconds``, stopped when the block ends. Each method
behaves as its namesake there.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from sidecar.core.runstate import OUTAGES, may_have_landed
from sidecar.core.shell import RunBase
from sidecar.errors import CheckpointError
from sidecar.sync.manager import SyncCheckpointManager

if TYPE_CHECKING:
    from sidecar.sync.checkpointer import SyncCheckpointer


class SyncResumableRun(RunBase[SyncCheckpointManager]):
    """An attempt at one run: ``with`` it, call :meth:`step` per section."""

    _renewer: threading.Thread | None = None
    _stop: threading.Event | None = None

    @property
    def _cp(self) -> SyncCheckpointer:
        return self.manager.checkpointer

    def __enter__(self) -> Self:
        started = time.perf_counter()
        error: CheckpointError | None = None
        try:
            self._acquire(release_on_outage=self._cp.config.strict)
        except OUTAGES as outage:
            error = outage
        self.entered(error, self._cp.config.strict)
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
            self._state.leaving()
            self._cp.perform(self._state.finish())
        except BaseException:
            self._state.finished(False)
            raise
        self._state.finished(True)

    def step(self, section: str, produce: Callable[[], Any], *, model: Any = None) -> Any:
        """The section's checkpointed content if present, else ``produce()`` saved and returned."""
        name, done, value = self._state.begin_step(section, model)
        if not done:
            self._prepare(name)
            done, value = self._state.take_restored(name, model)  # the acquire may restore it
        if done:
            return value
        value = produce()
        self._keep(name, value)
        return value

    # --- the pieces, for servers that hold a lease across requests ---------------------------

    def acquire(self) -> None:
        self._acquire(release_on_outage=True)
        self._state.acquired_by_api()

    def save(self, section: str, content: Any) -> bool:
        return bool(self._keep(self._state.begin_step(section)[0], content))

    def renew(self) -> None:
        self._state.check_renewed(self._cp.execute_op(self._state.renew()))

    def complete(self) -> None:
        self._cp.perform(self._state.finish())
        self._state.finished(True)

    def fail(self) -> None:
        self._state.finished(False)
        self._state.check_released(self._cp.execute_op(self._state.release()))

    # --- internals ---------------------------------------------------------------------------

    def _prepare(self, name: str) -> None:
        started = time.perf_counter()
        for op in self._state.preflight(name):
            with contextlib.suppress(*OUTAGES):
                self._cp.perform(op)
        self._after_acquire(started)

    def _keep(self, name: str, value: Any) -> bool | None:
        saved = self._cp.perform(self._state.save(name, value)) if self.confirmed else None
        self._state.produced(name, value)
        return saved

    def _acquire(self, *, release_on_outage: bool) -> None:
        try:
            self._cp.perform(self._state.acquire())
        except OUTAGES as error:
            if release_on_outage and may_have_landed(error):
                self._cp.execute_op(self._state.release())
            raise

    def _after_acquire(self, started: float) -> None:
        if self.confirmed_now(started) and self._renewer is None:
            self._stop = threading.Event()
            self._renewer = threading.Thread(
                target=self._renew_forever, args=(self._stop,), daemon=True,
                name="checkpoint-lease-renewal",
            )  # fmt: skip
            self._renewer.start()

    def _stop_renewing(self) -> None:
        if self._renewer is not None and self._stop is not None:
            self._stop.set()
            self._renewer.join()
            self._renewer = None

    def _renew_forever(self, stop: threading.Event) -> None:
        interval = self._cp.config.lease_ttl_seconds / 3
        while not self._state.lost and not stop.wait(interval):
            self._state.renewed_in_background(self._cp.execute_op(self._state.renew()))
