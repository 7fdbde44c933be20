"""The seed's factory: one manager per user execution context, async or sync."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from sidecar.models import ContextLike

M = TypeVar("M")
M_co = TypeVar("M_co", covariant=True)


class MakesManagers(Protocol[M_co]):
    """A Checkpointer or a SyncCheckpointer: anything with ``manager(ctx)``."""

    def manager(self, ctx: ContextLike) -> M_co: ...


class CheckpointFactory(Generic[M]):
    """``CheckpointFactory(checkpointer).create_for_context(ctx)``: the seed's entry point.

    A :class:`~sidecar.Checkpointer` makes :class:`~sidecar.CheckpointManager` s, a
    :class:`~sidecar.SyncCheckpointer` :class:`~sidecar.SyncCheckpointManager` s.
    """

    def __init__(self, checkpointer: MakesManagers[M]) -> None:
        self.checkpointer = checkpointer

    def create_for_context(self, context: ContextLike) -> M:
        return self.checkpointer.manager(context)
