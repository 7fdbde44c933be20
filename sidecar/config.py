"""CheckpointConfig: every setting in one typed object, from arguments, a URL or ``SIDECAR_*``.

Precedence (pydantic-settings): explicit arguments, then ``SIDECAR_*`` environment variables,
then the defaults below. Invalid values are rejected at construction with a message that names
the setting, so a typo fails at start-up rather than at the first checkpoint.
"""

from __future__ import annotations

from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sidecar.keys import validate_prefix

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``: safe for logs, spans and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}" if user else f":***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class CheckpointConfig(BaseSettings):
    """Settings of a :class:`~sidecar.Checkpointer` (environment prefix ``SIDECAR_``)."""

    model_config = SettingsConfigDict(
        env_prefix="SIDECAR_", frozen=True, extra="forbid", validate_default=True
    )

    redis_url: str = Field(
        DEFAULT_REDIS_URL,
        description="Redis URL: redis://, rediss:// (TLS), unix://, or redis+cluster:// .",
    )
    key_prefix: str = Field("ckpt", description="First part of every key this library writes.")
    ttl_seconds: int = Field(3600, gt=0, description="A run expires this long after its last save.")
    budget_ms: float = Field(
        100.0, gt=0, le=60_000, description="Upper bound of one checkpoint call."
    )
    max_section_bytes: int = Field(
        1024 * 1024, gt=0, le=512 * 1024 * 1024, description="Largest serialized section accepted."
    )
    strict: bool = Field(False, description="Raise on outages instead of returning 'nothing'.")
    breaker_failures: int = Field(
        5, ge=1, description="Consecutive failures that open the circuit."
    )
    breaker_cooldown_s: float = Field(5.0, gt=0, description="Open-circuit time before a probe.")
    refresh_ttl_on_read: bool = Field(False, description="Loads also reset the run's TTL.")
    lease_ttl_seconds: int = Field(
        60, gt=0, description="Lease lifetime; renewed while a run is open."
    )
    trace_identifiers: bool = Field(False, description="Put user/run ids on spans (off: privacy).")

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in _SCHEMES:
            raise ValueError(
                f"redis_url scheme must be one of {', '.join(_SCHEMES)} (got {scheme or 'none'!r})"
            )
        return value

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        try:
            return validate_prefix(value)
        except ValueError as exc:
            raise ValueError(str(exc)) from None

    @property
    def budget_seconds(self) -> float:
        return self.budget_ms / 1000.0

    @property
    def ttl_ms(self) -> int:
        return self.ttl_seconds * 1000

    @property
    def lease_ttl_ms(self) -> int:
        return self.lease_ttl_seconds * 1000

    @property
    def is_cluster(self) -> bool:
        return urlsplit(self.redis_url).scheme.endswith("+cluster")

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> Self:
        """Settings for the given Redis URL; other settings from ``overrides`` / environment."""
        return cls(redis_url=url, **overrides)

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "redis_url" else value
