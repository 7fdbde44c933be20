"""SyncCheckpointManager: the seed's verbs for one (user, run), as plain methods.

The ops are built by the I/O-free :class:`sidecar.core.verbs.Verbs` (which documents each
verb's command and "nothing"); this class only carries them out, in the calling thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sidecar.core.verbs import Verbs, scope_for
from sidecar.models import ContextLike, Progress, ResumeView

if TYPE_CHECKING:
    from sidecar.sync.checkpointer import SyncCheckpointer


class SyncCheckpointManager:
    """Checkpoints of one user execution context. Cheap to create; safe to share by threads."""

    def __init__(self, checkpointer: SyncCheckpointer, ctx: ContextLike) -> None:
        self._cp = checkpointer
        scope = scope_for(checkpointer.config, ctx, checkpointer.store.slot)
        self.verbs = Verbs(scope, checkpointer.config, checkpointer.calls)
        self.keys = scope.keys
        self.user_id, self.run_id = scope.ids
        self.slot = scope.slot

    @property
    def checkpointer(self) -> SyncCheckpointer:
        return self._cp

    def save_section(self, section: str, content: Any) -> bool:
        """See :meth:`sidecar.CheckpointManager.save_section`."""
        verbs = self.verbs
        name = verbs.section("save_section", section)
        return self._cp.perform(
            verbs.save_section(name, verbs.payload("save_section", name, content))
        )

    def load_section(self, section: str, model: Any = None) -> Any:
        """See :meth:`sidecar.CheckpointManager.load_section`."""
        return self._cp.perform(
            self.verbs.load_section(self.verbs.section("load_section", section), model)
        )

    def load_all_sections(self, model: Any = None) -> dict[str, Any]:
        return self._cp.perform(self.verbs.load_all_sections(model))

    def get_progress(self) -> Progress:
        return self._cp.perform(self.verbs.get_progress())

    def has_checkpoints(self) -> bool:
        return self._cp.perform(self.verbs.has_checkpoints())

    def get_checkpoint_age(self) -> float | None:
        return self._cp.perform(self.verbs.get_checkpoint_age())

    def cleanup(self) -> bool:
        return self._cp.perform(self.verbs.cleanup())

    def resume_view(self, model: Any = None) -> ResumeView | None:
        return self._cp.perform(self.verbs.resume_view(model))
