"""checkpoint-sidecar: budget-bounded, instrumented Redis checkpoints for LLM agents.

The public API; everything else is an implementation detail.
"""

from sidecar.checkpointer import Checkpointer
from sidecar.config import CheckpointConfig
from sidecar.errors import (
    CheckpointError,
    CheckpointRefused,
    CheckpointTimeout,
    CheckpointUnavailable,
    CircuitOpen,
    IntegrityError,
    InvalidIdentifier,
    LeaseHeld,
    LeaseLost,
    SectionTooLarge,
    SerializationError,
)
from sidecar.factory import CheckpointFactory
from sidecar.manager import CheckpointManager
from sidecar.models import CheckpointEvent, Progress, ResumeView, RunContext
from sidecar.run import ResumableRun
from sidecar.sync.checkpointer import SyncCheckpointer
from sidecar.sync.manager import SyncCheckpointManager
from sidecar.sync.run import SyncResumableRun

__version__ = "0.1.0"

__all__ = [
    "CheckpointConfig",
    "CheckpointError",
    "CheckpointEvent",
    "CheckpointFactory",
    "CheckpointManager",
    "CheckpointRefused",
    "CheckpointTimeout",
    "CheckpointUnavailable",
    "Checkpointer",
    "CircuitOpen",
    "IntegrityError",
    "InvalidIdentifier",
    "LeaseHeld",
    "LeaseLost",
    "Progress",
    "ResumableRun",
    "ResumeView",
    "RunContext",
    "SectionTooLarge",
    "SerializationError",
    "SyncCheckpointManager",
    "SyncCheckpointer",
    "SyncResumableRun",
    "__version__",
]
