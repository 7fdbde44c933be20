"""CheckpointConfig: every setting in one typed object, from arguments, a URL or ``SIDECAR_*``.

Precedence (pydantic-settings): explicit arguments, then ``SIDECAR_*`` environment variables,
then the defaults below. Invalid values are rejected at construction with a message that names
the setting, so a typo fails at start-up rather than at the first checkpoint. Error messages
never repeat the value given (``hide_input_in_errors``): a mistyped URL may hold a password, a
malformed encryption key is a secret, and both end up in logs.

Encryption keys are ``SecretStr``: ``repr``, ``str`` and JSON dumps show ``**********``. The
parsed keys are built on demand by :attr:`CheckpointConfig.keyring` (see :mod:`sidecar.keyring`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from sidecar.keyring import KeyRing, read_key_file, split_specs
from sidecar.keys import validate_prefix

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
ZSTD_HINT = "pip install 'checkpoint-sidecar[zstd]'"
ENCRYPTION_HINT = "pip install 'checkpoint-sidecar[encryption]'"
DEFLATE_HINT = "pip install 'checkpoint-sidecar[deflate]'"
Compression = Literal["none", "zstd", "deflate"]
CODEC_LEVELS: dict[str, tuple[int, int]] = {"zstd": (-7, 19), "deflate": (0, 3)}
"""Per codec: the lowest and the highest level (each codec's default: :mod:`sidecar.seal`)."""


def has_module(name: str) -> bool:
    """Whether an optional dependency is importable (without importing it)."""
    return importlib.util.find_spec(name) is not None


def default_compression() -> Compression:
    """``zstd`` when the ``[zstd]`` extra is installed, else ``none``."""
    return "zstd" if has_module("zstandard") else "none"


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
        env_prefix="SIDECAR_",
        frozen=True,
        extra="forbid",
        validate_default=True,
        hide_input_in_errors=True,
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
    # --- what sits in Redis (docs/storage.md) ----------------------------------------------
    compression: Compression = Field(
        default_factory=default_compression,
        description="Section compression: 'zstd' (default with the [zstd] extra), 'deflate' "
        "(ISA-L, the [deflate] extra: the least CPU per save) or 'none'.",
    )
    compression_min_bytes: int = Field(
        512, ge=0, description="Sections smaller than this (serialized) are stored uncompressed."
    )
    compression_level: int | None = Field(
        None,
        description="The codec's level; None: its default. zstd: 1 (~2.8x on English text; "
        "-7..19, negative levels are its fast modes). deflate: 0 (~2.5x for ~40% less CPU "
        "than zstd 1; 0..3). bench/storage.py measures each.",
    )
    encryption_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="AES-256-GCM keys '<key-id>:<base64 of 32 bytes>', the first one current "
        "(env SIDECAR_ENCRYPTION_KEYS: comma-separated).",
    )
    encryption_keys_file: Path | None = Field(
        None, description="File with the encryption keys, one per line, the first one current."
    )
    read_unencrypted: bool = Field(
        True,
        description="With keys set, still read values stored without encryption (written "
        "before it was turned on). Turn off once those runs have expired.",
    )
    min_replicas: int = Field(
        0, ge=0, le=64, description="Replicas that must acknowledge a save (WAIT) to confirm it."
    )
    min_local_fsync: bool = Field(
        False, description="A save is confirmed once the primary fsynced its AOF (WAITAOF)."
    )

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

    @field_validator("encryption_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):  # SIDECAR_ENCRYPTION_KEYS, or one key passed as a string
            return split_specs(value)
        return value

    @model_validator(mode="after")
    def _check_storage(self) -> Self:
        if self.compression == "zstd" and not has_module("zstandard"):
            raise ValueError(f"compression='zstd' needs the zstandard package: {ZSTD_HINT}")
        if self.compression == "deflate" and not has_module("isal"):
            raise ValueError(f"compression='deflate' needs the isal package: {DEFLATE_HINT}")
        if self.compression_level is not None and self.compression in CODEC_LEVELS:
            low, high = CODEC_LEVELS[self.compression]
            if not low <= self.compression_level <= high:
                raise ValueError(
                    f"compression_level for {self.compression} must be in {low}..{high} "
                    f"(got {self.compression_level})"
                )
        if self.encryption_keys and self.encryption_keys_file is not None:
            raise ValueError("set encryption_keys or encryption_keys_file, not both")
        if self.encrypts:
            if not has_module("cryptography"):
                raise ValueError(f"encryption needs the cryptography package: {ENCRYPTION_HINT}")
            self.keyring  # noqa: B018  (parses every key: a malformed one fails construction)
        return self

    @property
    def encrypts(self) -> bool:
        """Whether keys are configured (new values are then sealed with the current one)."""
        return bool(self.encryption_keys) or self.encryption_keys_file is not None

    @property
    def keyring(self) -> KeyRing | None:
        """The parsed keys (read from ``encryption_keys_file`` when that is the source), or None.

        Parsed on each access: a Checkpointer reads it once, at construction.
        """
        if self.encryption_keys_file is not None:
            return KeyRing.parse(read_key_file(self.encryption_keys_file))
        if self.encryption_keys:
            return KeyRing.parse(key.get_secret_value() for key in self.encryption_keys)
        return None

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
