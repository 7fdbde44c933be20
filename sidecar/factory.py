"""The seed's factory: one CheckpointManager per user execution context."""

from __future__ import annotations

from sidecar.checkpointer import Checkpointer
from sidecar.manager import CheckpointManager
from sidecar.models import ContextLike


class CheckpointFactory:
    """``CheckpointFactory(checkpointer).create_for_context(ctx)``: the seed's entry point."""

    def __init__(self, checkpointer: Checkpointer) -> None:
        self.checkpointer = checkpointer

    def create_for_context(self, context: ContextLike) -> CheckpointManager:
        return self.checkpointer.manager(context)
