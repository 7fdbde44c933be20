"""The state of one attempt at a run, I/O-free: lease, fencing token, restore, plan, report.

Both shells (asyncio's :class:`~sidecar.run.ResumableRun` and the thread-based one) drive a
:class:`RunState`: they ask it for the next op, send it, and the op's ``parse`` moves the state
on. The rules, in one place:

* **Confirmed or not.** A run is *confirmed* once an acquire reached Redis and returned its
  fencing token. A run whose acquire failed (outage, budget) keeps its owner token, retries the
  acquire before each step (inside that step's budget), and never writes a section while
  unconfirmed: every write of a run goes through the lease guard, and only owner-checked
  scripts run when it ends.
* **Lost.** A save, mark, renew or finish that finds another holder, a newer fence, or the run
  gone (finished, expired, evicted) marks the attempt lost: it raises :class:`LeaseLost` and
  never produces another section.
* **One round trip a step.** With a plan, the acquire marks the first missing section in
  progress and each save marks the next one, so a step in plan order costs one EVALSHA.
  A step out of plan order sends one ``mark_in_progress`` first, and so does a step taken
  when the lease may have expired since it was last confirmed (the process was paused, say):
  a fenced-out attempt learns it before paying for the section.
* **Undecodable sections** (or sealed ones that do not authenticate) found at restore are
  discarded (counted as
  ``checkpoint_sections_total{source="discarded"}``, logged by name) and produced again.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from sidecar import codec, lua
from sidecar.core.ops import Op, Sizes, script_call
from sidecar.core.packed import packed_pairs
from sidecar.core.verbs import Verbs, text
from sidecar.errors import (
    CheckpointError,
    CheckpointRefused,
    CheckpointTimeout,
    CheckpointUnavailable,
    CircuitOpen,
    LeaseHeld,
    LeaseLost,
)
from sidecar.keys import validate_section
from sidecar.telemetry import Metrics

logger = logging.getLogger("sidecar")
OUTAGES = (CheckpointTimeout, CheckpointUnavailable)
Answer = tuple[bool | None, CheckpointError | None]
"""What ``execute_op`` returns for a lease op: (answer, None) or (None, outage)."""


def may_have_landed(error: CheckpointError) -> bool:
    """Whether a failed command may still have run: not when Redis refused it, nor when the
    open circuit kept it from being sent."""
    return not isinstance(error, CheckpointRefused | CircuitOpen)


_REFUSED = {
    "held": "another attempt holds the run's lease",
    "fenced": "another attempt acquired the run since",
    "gone": "the run was completed by another attempt",
}


class RunState:
    """One attempt at one run. ``owner``/``fencing_token`` given: a run acquired earlier."""

    def __init__(
        self,
        verbs: Verbs,
        metrics: Metrics,
        plan: list[str] | tuple[str, ...] | None = None,
        *,
        owner: str | None = None,
        fencing_token: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.verbs = verbs
        self.metrics = metrics
        self.plan: list[str] = [validate_section(s) for s in plan] if plan else []
        self.owner = owner if owner is not None else secrets.token_hex(16)
        self.fencing_token = fencing_token
        self.confirmed = owner is not None
        self.lost = False
        self.resumed = False
        self.restored: dict[str, Any] = {}
        self.report: dict[str, Any] = {}
        self.restored_used = 0
        self.success = False
        self.marked = ""  # the section Redis has as in progress for this attempt
        self.just_confirmed = False  # an acquire succeeded; the shell has not reacted yet
        self._clock = clock
        self._lease_until = 0.0  # until when the lease is surely ours (monotonic clock)

    @property
    def remaining(self) -> list[str]:
        """Plan sections not yet restored or produced, in plan order."""
        return [s for s in self.plan if s not in self.restored and s not in self.report]

    def _op(self, operation: str, script: lua.Script, keys: tuple[str, ...], args: tuple[Any, ...],
            nothing: Any, parse: Any, **kw: Any) -> Op[Any]:  # fmt: skip
        return self.verbs.op(operation, script_call(script, keys, args), nothing, parse=parse, **kw)

    def _lose(self, reason: str, what: str) -> LeaseLost:
        self.lost = True
        return LeaseLost(f"{what} refused: {_REFUSED.get(reason, reason)}")

    # --- ops ---------------------------------------------------------------------------------

    def acquire(self) -> Op[None]:
        """Lease + fencing token + restore + first marker, in one EVALSHA (raises LeaseHeld)."""
        cfg = self.verbs.config
        args = (self.owner, cfg.lease_ttl_ms, cfg.ttl_ms, *self.plan)

        def parse(reply: Any) -> None:
            if int(reply[0]) != 1:
                pttl = max(0, int(reply[1]))
                raise LeaseHeld(
                    f"run is held by another attempt (lease expires in {pttl} ms)", pttl
                )
            self.fencing_token = int(text(reply[1]))
            self.confirmed = True
            self.just_confirmed = True
            self._lease_confirmed()
            self.lost = False
            self.restored = self._decode_restored(packed_pairs(reply[2]))
            self.resumed = bool(self.restored)
            missing = [s for s in self.plan if s not in self.restored]
            self.marked = missing[0] if missing else ""

        keys = self.verbs.scope.keys.all
        return self._op("lease_acquire", lua.ACQUIRE_LEASE, keys, args, None, parse,
                        always_raise=True)  # fmt: skip

    def _decode_restored(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        restored: dict[str, Any] = {}
        for name, raw in pairs:
            try:
                restored[name] = codec.load(name, self.verbs.open(name, raw, Sizes()))
            except CheckpointError as exc:
                self.metrics.sections.labels("discarded").inc()
                logger.warning(
                    "checkpointed section %r does not decode; it will be produced again (%s)",
                    name, type(exc).__name__,
                )  # fmt: skip
        return restored

    def save(self, name: str, content: Any) -> Op[bool]:
        """The fenced save of a produced section, marking the next planned one in progress."""
        verbs = self.verbs
        payload = verbs.payload("save_section", name, content)
        following = [s for s in self.remaining if s != name]
        next_section = following[0] if following else ""

        def parse(reply: Any) -> bool:
            if reply != 1:
                raise self._lose(text(reply[1]), f"save of {name!r}")
            self.marked = next_section
            return True

        return verbs.save_section(
            name, payload, owner=self.owner, fence=self.fencing_token,
            next_section=next_section, parse=parse,
        )  # fmt: skip

    def _lease_confirmed(self) -> None:
        cfg = self.verbs.config
        self._lease_until = self._clock() + cfg.lease_ttl_seconds - cfg.budget_seconds

    def _answer(self, answer: Answer) -> bool:
        """A lease op's answer; on an outage True in best-effort mode (nothing was refused),
        the error in strict mode."""
        result, error = answer
        if error is not None:
            if self.verbs.config.strict:
                raise error
            return True
        return bool(result)

    def check_renewed(self, answer: Answer) -> None:
        if not self._answer(answer):
            raise LeaseLost("lease renewal refused: the run is not this attempt's any more")

    def check_released(self, answer: Answer) -> None:
        if not self._answer(answer):
            raise LeaseLost("release refused: the lease is not this attempt's")

    def renewed_in_background(self, answer: Answer) -> None:
        """The renewal loop's answer: a lost lease is logged (the next step raises)."""
        renewed, error = answer
        if error is None and not renewed:
            logger.warning("lease of a run was lost: another attempt took it or it ended")

    def preflight(self, name: str) -> list[Op[Any]]:
        """What to send before producing ``name`` (none, or one op): the acquire of an
        unconfirmed run (LeaseHeld if another attempt has the run), or the marker of a step
        that needs one (LeaseLost if fenced). Their outages do not stop the step."""
        if not self.confirmed:
            return [self.acquire()]
        return [self.mark(name)] if self.needs_mark(name) else []

    def needs_mark(self, name: str) -> bool:
        """Whether producing ``name`` needs its own marker call: a step out of plan order, or
        a lease that may have expired since it was last confirmed."""
        if not self.confirmed:
            return False
        return name != self.marked or self._clock() > self._lease_until

    def mark(self, name: str) -> Op[bool]:
        cfg = self.verbs.config
        args = (name, self.owner, cfg.ttl_ms, self.fencing_token)

        def parse(reply: Any) -> bool:
            if not int(reply):
                raise self._lose("fenced", f"producing {name!r}")
            self.marked = name
            return True

        keys = self.verbs.scope.keys.all
        return self._op("mark_in_progress", lua.MARK_IN_PROGRESS, keys, args, False, parse,
                        section=name)  # fmt: skip

    def renew(self) -> Op[bool]:
        """Extend the lease (re-take it if it merely expired). False once the run is lost."""
        keys = self.verbs.scope.keys.all
        args = (self.owner, self.verbs.config.lease_ttl_ms, self.fencing_token)

        def parse(reply: Any) -> bool:
            if not int(reply):
                self.lost = True
                return False
            self._lease_confirmed()
            return True

        return self._op("lease_renew", lua.RENEW_LEASE, keys, args, True, parse)

    def release(self) -> Op[bool]:
        """Give the lease back if it is ours (owner-checked); checkpoints stay."""
        keys = self.verbs.scope.keys
        return self._op("lease_release", lua.RELEASE_LEASE, (keys.meta, keys.lease),
                        (self.owner,), False, _is_one)  # fmt: skip

    def finish(self) -> Op[bool]:
        """Cleanup after success, owner-checked: delete the run's keys if they are ours.

        Confirmed: refused (LeaseLost) when another attempt holds or took the run. Never
        confirmed: deletes only if a landed acquire made the lease ours; otherwise leaves the
        keys to their TTL (False).
        """
        fence = self.fencing_token if self.confirmed else ""
        args = (self.owner, fence, self.verbs.config.ttl_ms)

        def parse(reply: Any) -> bool:
            if int(reply):
                return True
            if self.confirmed:
                raise self._lose("held", "cleanup")
            return False

        keys = self.verbs.scope.keys.all
        return self._op("cleanup", lua.FINISH_RUN, keys, args, False, parse,
                        event="cleaned", event_if=bool)  # fmt: skip

    # --- bookkeeping -------------------------------------------------------------------------

    def begin_step(self, section: str, model: Any = None) -> tuple[str, bool, Any]:
        """(name, True, value) when the step needs no producing: restored, or produced earlier
        in this attempt (never paid twice); (name, False, None) when it does. Raises
        :class:`LeaseLost` for an attempt that lost its run."""
        name = validate_section(section)
        found, value = self.take_restored(name, model)
        if found:
            return name, True, value
        if name in self.report:
            return name, True, self.report[name]
        if self.lost:
            raise LeaseLost("this attempt's lease was taken over; it may not produce sections")
        return name, False, None

    def take_restored(self, name: str, model: Any = None) -> tuple[bool, Any]:
        """(True, value) when ``name`` was restored (counted once), else (False, None)."""
        if name not in self.restored:
            return False, None
        value = self.restored[name]
        if model is not None:
            value = codec.load(name, codec.dump(name, value, 1 << 62), model)
        if name not in self.report:
            self.restored_used += 1
            self.metrics.sections.labels("restored").inc()
        self.report[name] = value
        return True, value

    def produced(self, name: str, value: Any) -> None:
        self.metrics.sections.labels("produced").inc()
        self.report[name] = value

    def started(self) -> None:
        self.metrics.runs_started.labels("resumed" if self.resumed else "fresh").inc()

    def acquired_by_api(self) -> None:
        """A run acquired by :meth:`acquire` (a server): started, its restored sections used."""
        self.started()
        for name in self.restored:
            self.take_restored(name)

    def leaving(self) -> None:
        """Before the cleanup of a block left normally: an attempt that lost its run fails."""
        if self.lost:
            raise LeaseLost("another attempt took this run over; it did not complete here")

    def finished(self, completed: bool) -> None:
        self.success = completed
        self.metrics.runs_finished.labels("completed" if completed else "failed").inc()

    def result(self) -> dict[str, Any]:
        """The seed's result: success, report (sections in order), checkpoints_used, resumed."""
        order = {name: i for i, name in enumerate(self.plan)}
        report = dict(sorted(self.report.items(), key=lambda kv: order.get(kv[0], len(order))))
        return {
            "success": self.success,
            "report": report,
            "checkpoints_used": self.resumed,
            "resumed_sections": self.restored_used,
        }


def _is_one(reply: Any) -> bool:
    return bool(int(reply))


class RunView:
    """What an attempt knows, read from its :class:`RunState`: shared by both run shells."""

    _state: RunState

    @property
    def plan(self) -> list[str]:
        return self._state.plan

    @property
    def owner(self) -> str:
        """This attempt's owner token (secret to it; it proves the lease is its own)."""
        return self._state.owner

    @property
    def fencing_token(self) -> int:
        return self._state.fencing_token

    @property
    def resumed(self) -> bool:
        return self._state.resumed

    @property
    def restored(self) -> dict[str, Any]:
        return self._state.restored

    @property
    def remaining(self) -> list[str]:
        """Plan sections not yet restored or produced, in plan order."""
        return self._state.remaining

    @property
    def confirmed(self) -> bool:
        """Whether this attempt holds the lease as far as it knows (False while degraded)."""
        return self._state.confirmed

    @property
    def lease_lost(self) -> bool:
        return self._state.lost

    def result(self) -> dict[str, Any]:
        """The seed's result: success, report (sections in order), checkpoints_used, resumed."""
        return self._state.result()
