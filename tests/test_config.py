"""CheckpointConfig: defaults, environment, URL, and clear rejection of invalid values."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sidecar import CheckpointConfig
from sidecar.config import redact_url


def test_defaults() -> None:
    cfg = CheckpointConfig()
    assert cfg.redis_url == "redis://127.0.0.1:6379/0"
    assert cfg.key_prefix == "ckpt"
    assert cfg.ttl_seconds == 3600
    assert cfg.budget_ms == 100
    assert cfg.max_section_bytes == 1024 * 1024
    assert cfg.strict is False
    assert cfg.breaker_failures == 5
    assert cfg.breaker_cooldown_s == 5.0
    assert cfg.refresh_ttl_on_read is False
    assert cfg.lease_ttl_seconds == 60
    assert cfg.trace_identifiers is False
    assert cfg.budget_seconds == 0.1


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_TTL_SECONDS", "120")
    monkeypatch.setenv("SIDECAR_STRICT", "true")
    monkeypatch.setenv("SIDECAR_REDIS_URL", "rediss://h:6380/2")
    cfg = CheckpointConfig()
    assert (cfg.ttl_seconds, cfg.strict, cfg.redis_url) == (120, True, "rediss://h:6380/2")
    assert CheckpointConfig(ttl_seconds=5).ttl_seconds == 5  # arguments win


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("ttl_seconds", 0, "greater than 0"),
        ("budget_ms", 0, "greater than 0"),
        ("budget_ms", -5, "greater than 0"),
        ("max_section_bytes", 0, "greater than 0"),
        ("breaker_failures", 0, "greater than or equal to 1"),
        ("breaker_cooldown_s", 0, "greater than 0"),
        ("lease_ttl_seconds", -1, "greater than 0"),
        ("redis_url", "http://x", "scheme must be one of"),
        ("key_prefix", "a b", "key_prefix must be"),
    ],
)
def test_invalid_values_are_rejected_clearly(field: str, value: object, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        CheckpointConfig(**{field: value})
    assert field in str(info.value)
    assert words in str(info.value)


def test_unknown_setting_is_rejected() -> None:
    with pytest.raises(ValidationError, match="ttl"):
        CheckpointConfig(ttl=5)  # type: ignore[call-arg]


def test_from_url_and_password_redaction() -> None:
    cfg = CheckpointConfig.from_url("redis://agent:s3cret@cache:6379/1", ttl_seconds=10)
    assert cfg.ttl_seconds == 10
    assert "s3cret" not in repr(cfg)
    assert "s3cret" not in str(cfg)
    assert redact_url("redis://agent:s3cret@cache:6379/1") == "redis://agent:***@cache:6379/1"
    assert redact_url("redis://:pw@cache/0") == "redis://:***@cache/0"
    assert redact_url("redis://cache:6379/0") == "redis://cache:6379/0"
    assert CheckpointConfig.from_url("redis+cluster://h:7000").is_cluster
