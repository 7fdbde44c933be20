"""The storage settings: compression, encryption keys (list, env, file), replication; malformed
keys are rejected naming the key id, and key material never shows."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from sidecar import CheckpointConfig
from sidecar import config as config_module

from .conftest import new_key


def secret(spec: str) -> str:
    return spec.split(":", 1)[1]


def test_defaults() -> None:
    cfg = CheckpointConfig()
    assert cfg.compression == "zstd"  # the extra is installed in the dev environment
    assert cfg.compression_min_bytes == 512
    assert cfg.compression_level is None  # each codec's own default (zstd 1, deflate 0)
    assert cfg.encryption_keys == []
    assert cfg.encryption_keys_file is None
    assert cfg.keyring is None
    assert not cfg.encrypts
    assert cfg.read_unencrypted is True
    assert cfg.min_replicas == 0
    assert cfg.min_local_fsync is False


def test_compression_defaults_to_none_without_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "has_module", lambda name: name != "zstandard")
    assert CheckpointConfig().compression == "none"
    with pytest.raises(ValidationError, match=r"checkpoint-sidecar\[zstd\]"):
        CheckpointConfig(compression="zstd")


def test_deflate_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "has_module", lambda name: name != "isal")
    with pytest.raises(ValidationError, match=r"checkpoint-sidecar\[deflate\]"):
        CheckpointConfig(compression="deflate")
    assert CheckpointConfig().compression == "zstd"  # the default does not need it


def test_encryption_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch, key1: str) -> None:
    monkeypatch.setattr(config_module, "has_module", lambda name: name != "cryptography")
    with pytest.raises(ValidationError, match=r"checkpoint-sidecar\[encryption\]"):
        CheckpointConfig(encryption_keys=[key1])


def test_keys_from_a_list_first_is_current(key1: str, key2: str) -> None:
    cfg = CheckpointConfig(encryption_keys=[key2, key1])
    ring = cfg.keyring
    assert ring is not None
    assert ring.current.key_id == "k2"
    assert ring.ids == ("k2", "k1")
    key = ring.get("k1")
    assert key is not None
    assert key.material == base64.b64decode(secret(key1))


def test_keys_from_the_environment_comma_separated(
    monkeypatch: pytest.MonkeyPatch, key1: str, key2: str
) -> None:
    monkeypatch.setenv("SIDECAR_ENCRYPTION_KEYS", f" {key2} , {key1}")
    ring = CheckpointConfig().keyring
    assert ring is not None
    assert ring.ids == ("k2", "k1")


def test_keys_from_a_file(
    tmp_path: Path, key1: str, key2: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# rotated 2026-12-01\n{key2}\n\n{key1}\n")
    path.chmod(0o644)
    cfg = CheckpointConfig(encryption_keys_file=path)
    assert "readable by group or others (mode 644)" in caplog.text
    assert secret(key1) not in caplog.text
    caplog.clear()
    path.chmod(0o400)
    assert CheckpointConfig(encryption_keys_file=path).keyring is not None
    assert "readable" not in caplog.text
    assert cfg.encrypts
    ring = cfg.keyring
    assert ring is not None
    assert ring.ids == ("k2", "k1")
    assert secret(key1) not in repr(cfg)


def test_keys_file_and_list_together_are_ambiguous(tmp_path: Path, key1: str) -> None:
    path = tmp_path / "keys"
    path.write_text(key1)
    with pytest.raises(ValidationError, match="not both"):
        CheckpointConfig(encryption_keys=[key1], encryption_keys_file=path)


def test_missing_keys_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="cannot read it"):
        CheckpointConfig(encryption_keys_file=tmp_path / "absent")


def good_material() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("short:" + base64.b64encode(os.urandom(31)).decode(), "'short': decodes to 31 bytes"),
        ("long:" + base64.b64encode(os.urandom(33)).decode(), "'long': decodes to 33 bytes"),
        ("notb64:" + good_material()[:-2] + "!!", "'notb64': not valid base64"),
        (good_material(), "#1: expected '<key-id>:<base64 of 32 bytes>'"),  # id forgotten
        ("has space:" + good_material(), "#1: expected"),
        ("x" * 33 + ":" + good_material(), "#1: expected"),
    ],
)
def test_malformed_keys_are_rejected_naming_the_id_never_the_key(spec: str, words: str) -> None:
    material = spec.rsplit(":", 1)[-1]
    with pytest.raises(ValidationError) as info:
        CheckpointConfig(encryption_keys=[spec])
    message = str(info.value)
    assert words in message
    assert material not in message
    assert material[:12] not in message


def test_malformed_key_in_the_environment_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    material = base64.b64encode(os.urandom(30)).decode()
    monkeypatch.setenv("SIDECAR_ENCRYPTION_KEYS", f"ok:{good_material()},bad:{material}")
    with pytest.raises(ValidationError) as info:
        CheckpointConfig()
    assert "'bad': decodes to 30 bytes" in str(info.value)
    assert material not in str(info.value)
    assert material not in repr(info.value)


def test_duplicate_key_ids_are_rejected() -> None:
    with pytest.raises(ValidationError, match="'k1': the id is used twice"):
        CheckpointConfig(encryption_keys=[new_key("k1"), new_key("k1")])


def test_key_material_never_in_repr_str_or_dumps(key1: str, key2: str) -> None:
    cfg = CheckpointConfig(encryption_keys=[key2, key1])
    for text in (repr(cfg), str(cfg), cfg.model_dump_json(), repr(cfg.model_dump()),
                 repr(cfg.keyring)):  # fmt: skip
        assert secret(key1) not in text
        assert secret(key2) not in text
    assert "**********" in repr(cfg)


async def test_from_url_keeps_the_keys(key1: str) -> None:
    from sidecar import Checkpointer

    cfg = CheckpointConfig(encryption_keys=[key1])
    async with Checkpointer.from_url("redis://127.0.0.1:1/0", config=cfg) as cp:
        ring = cp.config.keyring
    assert ring is not None
    assert ring.ids == ("k1",)


def test_replication_settings() -> None:
    cfg = CheckpointConfig(min_replicas=2, min_local_fsync=True)
    assert (cfg.min_replicas, cfg.min_local_fsync) == (2, True)
    with pytest.raises(ValidationError, match="min_replicas"):
        CheckpointConfig(min_replicas=-1)
    with pytest.raises(ValidationError, match="compression_min_bytes"):
        CheckpointConfig(compression_min_bytes=-1)
    with pytest.raises(ValidationError, match="compression"):
        CheckpointConfig(compression="gzip")  # type: ignore[arg-type]
    for level in (-8, 20):
        with pytest.raises(ValidationError, match="compression_level"):
            CheckpointConfig(compression_level=level)
    for level in (-1, 4):
        with pytest.raises(
            ValidationError, match=r"compression_level for deflate must be in 0\.\.3"
        ):
            CheckpointConfig(compression="deflate", compression_level=level)
    assert CheckpointConfig(compression="deflate", compression_level=3).compression_level == 3


def test_compression_level_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_COMPRESSION_LEVEL", "-3")
    assert CheckpointConfig().compression_level == -3


def test_invalid_url_is_not_echoed() -> None:
    with pytest.raises(ValidationError) as info:
        CheckpointConfig(redis_url="http://agent:hunter2@cache:6379")
    assert "hunter2" not in str(info.value)
