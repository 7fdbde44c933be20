"""The value types users see: the run context, progress, and checkpoint events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sidecar.keys import MAX_ID_CHARS, encode_id


@runtime_checkable
class ContextLike(Protocol):
    """Anything with string ``user_id`` and ``run_id`` (e.g. the seed's UserExecutionContext)."""

    @property
    def user_id(self) -> str: ...

    @property
    def run_id(self) -> str: ...


class RunContext(BaseModel):
    """Who and which run: the isolation boundary of every checkpoint."""

    model_config = ConfigDict(frozen=True)

    user_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    run_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)

    @field_validator("user_id", "run_id")
    @classmethod
    def _encodable(cls, value: str) -> str:
        encode_id("identifier", value)
        return value


class Progress(BaseModel):
    """The seed's progress shape, read from the run's meta hash in one command."""

    completed_sections: list[str] = Field(default_factory=list)
    in_progress: str | None = None
    total_sections: int = 0
    last_update: datetime | None = None


EventKind = Literal["saved", "loaded", "resumed", "cleaned"]


@dataclass(frozen=True, slots=True)
class CheckpointEvent:
    """One checkpoint event for a UI (the seed's ``checkpoint_saved`` WebSocket message).

    ``section`` is None for run-wide events (``resumed``, ``cleaned``, a ``loaded`` of all).
    """

    kind: EventKind
    user_id: str
    run_id: str
    section: str | None
    duration_s: float


class ResumeView(BaseModel):
    """What a new attempt needs to resume a run, read in one call: its sections in completion
    order, its progress, and the seconds since its last save (server clock)."""

    sections: dict[str, Any] = Field(default_factory=dict)
    progress: Progress = Field(default_factory=Progress)
    age_seconds: float | None = None
