"""The library's lower-level run API as the HTTP handlers use it (issue 9), typed here.

A server holds a run's lease across requests, so it needs the run verbs one at a time:
``acquire`` (lease + restore in one round trip), fenced ``save``, ``renew``, ``complete``,
``fail``, and ``attach`` to a run acquired by an earlier request. :class:`LeaseRun` names
exactly what the handlers call; :func:`start_run` and :func:`attach_run` reach the library.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, cast

from sidecar.checkpointer import Checkpointer
from sidecar.models import ContextLike


class LeaseRun(Protocol):
    owner: str
    fencing_token: int
    resumed: bool
    restored: dict[str, Any]

    @property
    def remaining(self) -> list[str]: ...

    async def acquire(self) -> None: ...

    async def save(self, section: str, content: Any) -> Any: ...

    async def renew(self) -> Any: ...

    async def complete(self) -> Any: ...

    async def fail(self) -> Any: ...


def start_run(cp: Checkpointer, ctx: ContextLike, plan: Sequence[str] | None) -> LeaseRun:
    return cast(LeaseRun, cp.run(ctx, plan=plan))


def attach_run(cp: Checkpointer, ctx: ContextLike, owner: str, fencing_token: int) -> LeaseRun:
    attach: Any = getattr(cp, "attach")  # noqa: B009 (issue 9 adds Checkpointer.attach)
    return cast(LeaseRun, attach(ctx, owner=owner, fencing_token=fencing_token))


async def resume_view(cp: Checkpointer, ctx: ContextLike) -> dict[str, Any] | None:
    """``{sections, progress, age_seconds}`` or None when the run has no checkpoints."""
    mgr = cp.manager(ctx)
    one_trip = getattr(mgr, "resume_view", None)
    if one_trip is not None:
        view = await one_trip()
        if view is None:
            return None
        dumped: dict[str, Any] = view.model_dump(mode="json")
        return dumped
    # until issue 9's resume_view lands: the same answer in three round trips
    sections = await mgr.load_all_sections()
    if not sections:
        return None
    progress = await mgr.get_progress()
    age = await mgr.get_checkpoint_age()
    return {
        "sections": sections,
        "progress": progress.model_dump(mode="json"),
        "age_seconds": age,
    }
