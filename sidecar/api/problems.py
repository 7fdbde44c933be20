"""Errors as ``application/problem+json`` (RFC 9457), each with a stable ``code``.

Clients branch on ``code``, never on ``title`` or ``detail`` (prose that may change). The
library's one error hierarchy (:mod:`sidecar.errors`) is mapped here, at the HTTP boundary,
the way :mod:`sidecar.store` maps redis-py's errors at the Redis boundary::

    InvalidIdentifier        400 invalid_identifier
    SerializationError       400 invalid_body
    SectionTooLarge          413 section_too_large   (+ limit)
    LeaseHeld                409 lease_held          (+ Retry-After)
    LeaseLost                409 lease_lost
    CheckpointUnavailable    503 unavailable         (+ Retry-After)
    CheckpointTimeout        504 budget_exceeded     ("not confirmed; saves are idempotent")
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

from sidecar.errors import (
    CheckpointError,
    CheckpointTimeout,
    CheckpointUnavailable,
    IntegrityError,
    InvalidIdentifier,
    LeaseHeld,
    LeaseLost,
    SectionTooLarge,
    SerializationError,
)

PROBLEM_TYPE: Final = "application/problem+json"
TYPE_BASE: Final = "https://checkpoint-sidecar.dev/problems/"

# code -> (status, title): the whole vocabulary, also published in the OpenAPI description.
CODES: Final[dict[str, tuple[int, str]]] = {
    "invalid_identifier": (400, "Invalid identifier"),
    "invalid_body": (400, "Invalid body"),
    "invalid_request": (400, "Invalid request"),
    "unauthorized": (401, "Unauthorized"),
    "not_found": (404, "No such route"),
    "run_not_found": (404, "Run not found"),
    "section_not_found": (404, "Section not found"),
    "method_not_allowed": (405, "Method not allowed"),
    "lease_held": (409, "Lease held by another attempt"),
    "lease_lost": (409, "Lease lost"),
    "section_too_large": (413, "Section too large"),
    "internal_error": (500, "Internal error"),
    "unavailable": (503, "Checkpoint store unavailable"),
    "budget_exceeded": (504, "Checkpoint budget exceeded"),
}
NOT_CONFIRMED: Final = "not confirmed; saves are idempotent"


class Problem(Exception):
    """An HTTP error answer: status, stable code, detail, extension members, extra headers."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.title = CODES[code]
        self.code = code
        self.detail = detail
        self.headers = headers or []
        self.extensions = extensions

    def body(self, instance: str | None = None) -> bytes:
        doc: dict[str, Any] = {
            "type": TYPE_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
            **self.extensions,
        }
        if instance is not None:
            doc["instance"] = instance
        return json.dumps(doc, ensure_ascii=True).encode()


def retry_after(seconds: float) -> list[tuple[bytes, bytes]]:
    """A ``Retry-After`` header in whole seconds (at least 1: 0 would invite a hot loop)."""
    return [(b"retry-after", str(max(1, math.ceil(seconds))).encode())]


def from_error(exc: CheckpointError, *, cooldown_s: float) -> Problem:
    """The problem a library error becomes. ``cooldown_s``: the breaker's, for Retry-After."""
    if isinstance(exc, InvalidIdentifier):
        return Problem("invalid_identifier", str(exc))
    if isinstance(exc, SectionTooLarge):
        return Problem("section_too_large", str(exc), limit=exc.limit)
    if isinstance(exc, SerializationError):
        return Problem("invalid_body", str(exc))
    if isinstance(exc, LeaseHeld):
        wait_s = exc.retry_after_ms / 1000 if exc.retry_after_ms > 0 else 1.0
        return Problem("lease_held", str(exc), headers=retry_after(wait_s))
    if isinstance(exc, LeaseLost):
        return Problem("lease_lost", str(exc))
    if isinstance(exc, CheckpointUnavailable):
        return Problem("unavailable", str(exc), headers=retry_after(cooldown_s))
    if isinstance(exc, IntegrityError):
        return Problem("internal_error", f"a stored checkpoint is corrupt: {exc}")
    if isinstance(exc, CheckpointTimeout):
        return Problem("budget_exceeded", f"{exc}; {NOT_CONFIRMED}")
    return Problem("internal_error", f"{type(exc).__name__}: {exc}")
