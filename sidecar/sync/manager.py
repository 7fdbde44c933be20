"""SyncCheckpointManager: the seed's verbs for one (user, run), as plain methods.

The ops are built by the I/O-free :class:`sidecar.core.verbs.Verbs` (which documents each
verb's command and "nothing"); this class only carries them out, in the calling thread. Each
verb behaves as its namesake in :class:`sidecar.CheckpointManager`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sidecar.core.shell import ManagerBase
from sidecar.models import ContextLike, Progress, ResumeView

if TYPE_CHECKING:
    from sidecar.sync.checkpointer import SyncCheckpointer


class SyncCheckpointManager(ManagerBase):
    """Checkpoints of one user execution context. Cheap to create; safe to share by threads."""

    def __init__(self, checkpointer: SyncCheckpointer, ctx: ContextLike) -> None:
        super().__init__(checkpointer, ctx)
        self.checkpointer = checkpointer

    def save_section(self, section: str, content: Any) -> bool:
        return self.checkpointer.perform(self.save_op(section, content))

    def load_section(self, section: str, model: Any = None) -> Any:
        return self.checkpointer.perform(self.load_op(section, model))

    def load_all_sections(self, model: Any = None) -> dict[str, Any]:
        return self.checkpointer.perform(self.verbs.load_all_sections(model))

    def get_progress(self) -> Progress:
        return self.checkpointer.perform(self.verbs.get_progress())

    def has_checkpoints(self) -> bool:
        return self.checkpointer.perform(self.verbs.has_checkpoints())

    def get_checkpoint_age(self) -> float | None:
        return self.checkpointer.perform(self.verbs.get_checkpoint_age())

    def cleanup(self) -> bool:
        return self.checkpointer.perform(self.verbs.cleanup())

    def resume_view(self, model: Any = None) -> ResumeView | None:
        return self.checkpointer.perform(self.verbs.resume_view(model))
