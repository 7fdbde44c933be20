"""checkpoint-sidecar: budget-bounded, instrumented Redis checkpoints for LLM agents.

The public API; everything else is an implementation detail.
"""

from sidecar.checkpointer import Checkpointer
from sidecar.config import CheckpointConfig
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
from sidecar.factory import CheckpointFactory
from sidecar.manager import CheckpointManager
from sidecar.models import CheckpointEvent, Progress, RunContext
from sidecar.run import ResumableRun

__version__ = "0.1.0"

__all__ = [
    "CheckpointConfig",
    "CheckpointError",
    "CheckpointEvent",
    "CheckpointFactory",
    "CheckpointManager",
    "CheckpointTimeout",
    "CheckpointUnavailable",
    "Checkpointer",
    "IntegrityError",
    "InvalidIdentifier",
    "LeaseHeld",
    "LeaseLost",
    "Progress",
    "ResumableRun",
    "RunContext",
    "SectionTooLarge",
    "SerializationError",
    "__version__",
]
