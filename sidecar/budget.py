"""The circuit breaker that keeps a dead Redis from costing every call a full budget.

After ``failures`` consecutive failures (errors or timeouts) the circuit opens: calls are
answered at once without touching the network (outcome ``skipped``). After ``cooldown_s`` one
call is let through as a probe; its success closes the circuit, its failure re-opens it for
another cooldown. State lives on one Checkpointer, not in a global; one event loop drives it, so
plain attributes are safe without locks.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    """Consecutive-failure breaker with a single half-open probe."""

    def __init__(
        self,
        failures: int,
        cooldown_s: float,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self._on_change = on_change
        self._clock = clock
        self.consecutive_failures = 0
        self.is_open = False
        self._opened_at = 0.0
        self._probing = False

    def allow(self) -> bool | None:
        """Whether a call may go to Redis: True (closed), None (yes, as the probe), False (skip)."""
        if not self.is_open:
            return True
        if self._probing or self._clock() - self._opened_at < self.cooldown_s:
            return False
        self._probing = True
        return None

    def success(self) -> None:
        self.consecutive_failures = 0
        self._probing = False
        if self.is_open:
            self.is_open = False
            self._notify(False)

    def failure(self, probe: bool = False) -> None:
        """Count a failure. ``probe`` says the call was the one let through while open.

        Only a failed probe restarts the cooldown: calls that were already in flight when the
        circuit opened fail late, and must not keep it open past the cooldown.
        """
        self.consecutive_failures += 1
        if self.is_open:
            if probe:
                self._probing = False
                self._opened_at = self._clock()
                self._notify(True)
        elif self.consecutive_failures >= self.threshold:
            self.is_open = True
            self._opened_at = self._clock()
            self._notify(True)

    def abandon_probe(self) -> None:
        """The probe was cancelled by its caller: let the next call probe instead."""
        self._probing = False

    def _notify(self, is_open: bool) -> None:
        """Tell the owner that a cooldown starts (True: calls are skipped) or the circuit closed."""
        if self._on_change is not None:
            self._on_change(is_open)
