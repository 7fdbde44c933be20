"""CheckpointManager: the seed's verbs for one (user, run), each one Redis command.

The ops themselves (command, arguments, reply parsing, best-effort "nothing") are built by the
I/O-free :class:`sidecar.core.verbs.Verbs`, which documents each verb's command; this class
only awaits them. Caller mistakes raise in every mode; outages raise only with
``strict=True``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sidecar.core.shell import ManagerBase
from sidecar.models import ContextLike, Progress, ResumeView

if TYPE_CHECKING:
    from sidecar.checkpointer import Checkpointer


class CheckpointManager(ManagerBase):
    """Checkpoints of one user execution context. Cheap to create; safe to share across tasks."""

    def __init__(self, checkpointer: Checkpointer, ctx: ContextLike) -> None:
        super().__init__(checkpointer, ctx)
        self.checkpointer = checkpointer

    async def save_section(self, section: str, content: Any) -> bool:
        """Store one finished section atomically with the progress update and TTL refresh.

        True when Redis confirmed the write. False (best-effort mode) means "not confirmed":
        the write may still land; saves are idempotent, so that is harmless.
        """
        return await self.checkpointer.perform(self.save_op(section, content))

    async def load_section(self, section: str, model: Any = None) -> Any:
        """The stored JSON value of ``section`` (or a ``model`` instance); None when absent."""
        return await self.checkpointer.perform(self.load_op(section, model))

    async def load_all_sections(self, model: Any = None) -> dict[str, Any]:
        """Every stored section, in completion order (one EVALSHA)."""
        return await self.checkpointer.perform(self.verbs.load_all_sections(model))

    async def get_progress(self) -> Progress:
        """The seed's progress shape (one HGETALL)."""
        return await self.checkpointer.perform(self.verbs.get_progress())

    async def has_checkpoints(self) -> bool:
        """True when at least one section is stored (one EXISTS)."""
        return await self.checkpointer.perform(self.verbs.has_checkpoints())

    async def get_checkpoint_age(self) -> float | None:
        """Seconds since the last save, by the Redis server's clock; None without checkpoints."""
        return await self.checkpointer.perform(self.verbs.get_checkpoint_age())

    async def cleanup(self) -> bool:
        """Delete every key of the run (one UNLINK). True when Redis confirmed."""
        return await self.checkpointer.perform(self.verbs.cleanup())

    async def resume_view(self, model: Any = None) -> ResumeView | None:
        """Sections (completion order), progress and age in one call; None when nothing is
        stored for the run."""
        return await self.checkpointer.perform(self.verbs.resume_view(model))
