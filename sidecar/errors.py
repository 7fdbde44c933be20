"""The one error hierarchy of checkpoint-sidecar.

::

    CheckpointError                      anything this library raises on purpose
    ├── InvalidIdentifier (ValueError)   bad user_id / run_id / section name / key prefix
    ├── SectionTooLarge                  serialized content above max_section_bytes
    ├── SerializationError               content that JSON (through pydantic) cannot represent
    ├── IntegrityError                   a stored value failed to decrypt or authenticate
    ├── CheckpointUnavailable            Redis unreachable, refusing, or the circuit is open
    │   ├── CheckpointRefused            Redis answered with a refusal (OOM, NOPERM, ...)
    │   └── CircuitOpen                  the circuit breaker is open: no call was made
    ├── CheckpointTimeout                Redis did not answer within the overhead budget
    ├── LeaseHeld                        another worker holds this run's lease
    └── LeaseLost                        this run's lease was taken over: its writes are refused

Caller mistakes (the first three), corrupt stored values and lease conflicts (the last two)
raise in every mode.
Outages (``CheckpointUnavailable``, ``CheckpointTimeout``) raise only with ``strict=True``;
in best-effort mode the verb returns the seed's "nothing" and the outcome is counted.
redis-py exceptions never escape: :mod:`sidecar.store` maps them here with ``raise ... from``.
"""

from __future__ import annotations


class CheckpointError(Exception):
    """Base class of every error this library raises on purpose."""


class InvalidIdentifier(CheckpointError, ValueError):
    """An identifier (user id, run id, section name, key prefix) is empty, too long or not text."""


class SectionTooLarge(CheckpointError):
    """The serialized section is larger than ``max_section_bytes``; nothing was written."""

    def __init__(self, section: str, size: int, limit: int) -> None:
        super().__init__(
            f"section {section!r} is {size} bytes serialized, above max_section_bytes={limit}"
        )
        self.section = section
        self.size = size
        self.limit = limit


class SerializationError(CheckpointError):
    """The content cannot be represented as JSON (or a stored value cannot be decoded)."""


class IntegrityError(CheckpointError):
    """A stored value failed to decrypt or authenticate: it is never returned as content."""


class CheckpointUnavailable(CheckpointError):
    """Redis is unreachable or refused the command, or the circuit breaker is open."""


class CheckpointRefused(CheckpointUnavailable):
    """Redis answered, refusing the command (out of memory, no permission, ...).

    Not an outage: it does not count toward the circuit breaker, so reads, which still work
    when Redis is full, keep being sent. Outcome ``error``; raised as a
    :class:`CheckpointUnavailable` in strict mode.
    """


class CircuitOpen(CheckpointUnavailable):
    """The circuit breaker of the run's server (or shard) is open: the call was skipped
    without touching the network (outcome ``skipped``)."""


class CheckpointTimeout(CheckpointError):
    """Redis did not answer within the overhead budget; the call gave up.

    A save that timed out is "not confirmed": it may still land. Saves are idempotent, so a
    retry or a late landing is harmless.
    """


class LeaseHeld(CheckpointError):
    """Another worker holds the lease of this run; two attempts must not interleave.

    ``retry_after_ms`` is how long the holder's lease has left (0 when unknown).
    """

    def __init__(self, message: str, retry_after_ms: int = 0) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class LeaseLost(CheckpointError):
    """The lease of this run now belongs to another attempt; this attempt's writes are refused."""
