"""Key layout: identifier encoding, the cluster hash tag, and one function per key.

A run owns four keys, all in one Redis Cluster hash slot (the part between ``{`` and ``}``)::

    <prefix>:{<user>:<run>}:sections   hash   section name -> JSON content
    <prefix>:{<user>:<run>}:meta       hash   progress, order, last update, fencing token
    <prefix>:{<user>:<run>}:lease      string owner token of the attempt holding the run
    <prefix>:{<user>:<run>}:done       string last fencing token of a run that completed: a
                                              stale attempt's late save is refused, never
                                              recreating the run (expires with the run's TTL)

``<user>`` and ``<run>`` are percent-encoded UTF-8 (RFC 3986, only ``A-Z a-z 0-9 - _ . ~`` kept),
so they contain no ``:``, ``{``, ``}``, glob characters or spaces: distinct (user, run) pairs never
share a key, and no identifier can widen a pattern or escape the hash tag. Nothing in this
library ever searches keys with a pattern; the watcher decodes expired key names with
:func:`parse_key`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import quote, unquote

from sidecar.errors import InvalidIdentifier

MAX_ID_CHARS: Final = 256
MAX_SECTION_CHARS: Final = 200
SECTIONS: Final = "sections"
META: Final = "meta"
LEASE: Final = "lease"
DONE: Final = "done"  # not a KeyKind: its expiry is no run's expiry, the watcher ignores it
KeyKind = Literal["sections", "meta", "lease"]
_KINDS: Final[frozenset[str]] = frozenset({SECTIONS, META, LEASE})
_PREFIX_RE: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def validate_prefix(prefix: str) -> str:
    """A key prefix is 1-64 characters of ``A-Z a-z 0-9 _ . -`` (no ``:``, braces or globs)."""
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
        raise InvalidIdentifier(
            f"key_prefix must be 1-64 characters of A-Z a-z 0-9 _ . - (got {prefix!r})"
        )
    return prefix


def _check_text(kind: str, value: object, limit: int) -> str:
    if not isinstance(value, str):
        raise InvalidIdentifier(f"{kind} must be a str, got {type(value).__name__}")
    if not value:
        raise InvalidIdentifier(f"{kind} must not be empty")
    if len(value) > limit:
        raise InvalidIdentifier(f"{kind} is {len(value)} characters; the limit is {limit}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidIdentifier(f"{kind} is not valid Unicode text (lone surrogate)") from exc
    return value


def encode_id(kind: str, value: object) -> str:
    """Validate an identifier and percent-encode it for use inside a key."""
    return quote(_check_text(kind, value, MAX_ID_CHARS), safe="")


def validate_section(section: object) -> str:
    """A section name is any non-empty text up to 200 characters (stored as a hash field)."""
    return _check_text("section name", section, MAX_SECTION_CHARS)


@dataclass(frozen=True, slots=True)
class RunKeys:
    """The four keys of one run, in the order the Lua scripts expect them."""

    sections: str
    meta: str
    lease: str
    done: str

    @property
    def all(self) -> tuple[str, str, str, str]:
        return (self.sections, self.meta, self.lease, self.done)


def run_keys(prefix: str, user_id: object, run_id: object) -> RunKeys:
    """Build the keys of one run. Raises :class:`InvalidIdentifier` for a bad identifier."""
    base = f"{prefix}:{{{encode_id('user_id', user_id)}:{encode_id('run_id', run_id)}}}:"
    return RunKeys(base + SECTIONS, base + META, base + LEASE, base + DONE)


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """A key name decoded back into its run and kind (used by the expiry watcher)."""

    user_id: str
    run_id: str
    kind: KeyKind


def parse_key(prefix: str, key: str | bytes) -> ParsedKey | None:
    """Decode a key written by this library under ``prefix``; None for any other key."""
    if isinstance(key, bytes):
        try:
            key = key.decode("utf-8")
        except UnicodeDecodeError:
            return None
    head = prefix + ":{"
    if not key.startswith(head):
        return None
    tag, sep, kind = key[len(head) :].partition("}:")
    parts = tag.split(":")
    if not sep or kind not in _KINDS or len(parts) != 2 or not all(parts):
        return None
    kind_literal: KeyKind = kind  # type: ignore[assignment]
    try:
        user, run = (unquote(part, errors="strict") for part in parts)
    except UnicodeDecodeError:
        return None
    return ParsedKey(user, run, kind_literal)
