"""Reads that check data, not timing, after a fault: one that only ran out of its budget
(a full GC pause of the long-lived pytest process took 60-140 ms here, and a loaded CI host
delays replies too) is tried again; wrong content or any other error still fails the test.

The reads go through a strict checkpointer, so that running out of budget raises
:class:`sidecar.CheckpointTimeout` instead of returning ``None`` like a missing section.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from sidecar import CheckpointTimeout

T = TypeVar("T")
ATTEMPTS = 5


def answered(read: Callable[[], T]) -> T:
    """``read()``, tried again while it times out (up to :data:`ATTEMPTS` times)."""
    for _ in range(ATTEMPTS - 1):
        try:
            return read()
        except CheckpointTimeout:
            continue
    return read()


async def answered_async(read: Callable[[], Awaitable[T]]) -> T:
    """``await read()``, tried again while it times out (up to :data:`ATTEMPTS` times)."""
    for _ in range(ATTEMPTS - 1):
        try:
            return await read()
        except CheckpointTimeout:
            continue
    return await read()
