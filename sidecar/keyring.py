"""Encryption keys: parsing ``"<key-id>:<base64 of 32 bytes>"`` and keeping the bytes out of sight.

A key id is short, public and written into every sealed value's header, so a reader knows which
key to try; the key itself is secret. Everything here is built so that the secret half can
only reach a cipher: error messages name the key id (or, when even the id cannot be trusted to
be one, the key's position in the list), never the key; :class:`DataKey` and :class:`KeyRing`
have a ``repr`` without the bytes; nothing is logged.

The first key of the list is the current one (new writes); the others keep old values readable
after a rotation (``"k2:...,k1:..."``: write with k2, read k2 and k1).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

logger = logging.getLogger("sidecar")
KEY_BYTES: Final = 32
MAX_KEY_ID_CHARS: Final = 32
# A key id can never be mistaken for a key: at most 32 characters of a set without ``+ / =``
# (a base64 AES-256 key is 44 characters), so echoing an id in a message never echoes a key.
_KEY_ID_RE: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,32}$")
_SHAPE: Final = "expected '<key-id>:<base64 of 32 bytes>' (key id: 1-32 of A-Z a-z 0-9 _ . -)"


@dataclass(frozen=True, slots=True)
class DataKey:
    """One AES-256 key and its public id. ``repr`` shows the id only."""

    key_id: str
    material: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key_id!r}, material=<redacted>)"


def parse_key(spec: str, position: int) -> DataKey:
    """One ``"<key-id>:<base64>"`` string → a :class:`DataKey`; ``ValueError`` naming the id.

    ``position`` (1-based) names the key when its id itself is malformed. Exceptions are raised
    ``from None``: a chained decoder error could carry the input.
    """
    key_id, sep, encoded = spec.strip().partition(":")
    if not sep or not _KEY_ID_RE.match(key_id):
        raise ValueError(f"encryption key #{position}: {_SHAPE}")
    try:
        material = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"encryption key {key_id!r}: not valid base64") from None
    if len(material) != KEY_BYTES:
        raise ValueError(
            f"encryption key {key_id!r}: decodes to {len(material)} bytes; "
            f"AES-256 needs {KEY_BYTES}"
        )
    return DataKey(key_id, material)


class KeyRing:
    """The configured keys by id; :attr:`current` seals new values, every key opens old ones."""

    __slots__ = ("_by_id", "current")

    def __init__(self, keys: Iterable[DataKey]) -> None:
        by_id: dict[str, DataKey] = {}
        for key in keys:
            if key.key_id in by_id:
                raise ValueError(f"encryption key {key.key_id!r}: the id is used twice")
            by_id[key.key_id] = key
        if not by_id:
            raise ValueError("no encryption key given")
        self._by_id = by_id
        self.current: DataKey = next(iter(by_id.values()))

    @classmethod
    def parse(cls, specs: Iterable[str]) -> KeyRing:
        return cls(parse_key(spec, i) for i, spec in enumerate(specs, 1))

    def get(self, key_id: str) -> DataKey | None:
        return self._by_id.get(key_id)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._by_id)

    def __repr__(self) -> str:
        return f"KeyRing(current={self.current.key_id!r}, ids={list(self._by_id)!r})"


def read_key_file(path: Path) -> list[str]:
    """Key specs from a file, one per line; blank lines and ``#`` comments are skipped.

    An unreadable file raises ``ValueError`` naming the path and the OS error, never a line.
    A file that group or others may read is used, with a warning (mode 0400 or 0600 is right).
    """
    try:
        if path.stat().st_mode & 0o077:
            logger.warning(
                "encryption_keys_file %s is readable by group or others (mode %o): "
                "make it 0400", str(path), path.stat().st_mode & 0o777,
            )  # fmt: skip
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ValueError(f"encryption_keys_file {str(path)!r}: cannot read it ({reason})") from None
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def split_specs(value: str) -> list[str]:
    """``SIDECAR_ENCRYPTION_KEYS``'s form: comma-separated specs, spaces around them ignored."""
    return [part.strip() for part in value.split(",") if part.strip()]
