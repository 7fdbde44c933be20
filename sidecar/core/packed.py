"""Replies packed into one string by the scripts' ``pack`` (``sidecar.lua.PACK``).

The scripts that read many values (a run's sections and meta, a LangGraph checkpoint with its
channel values) answer ``<len>,<len>,...;<part><part>...`` instead of an array with one RESP
element per value: redis-py's parser is pure Python, and a resume view of four sections came
back as 25 elements in three arrays (33-54 us more per call here than the packed string,
unpacking included). Lengths count bytes, so any bytes go through: sealed and compressed
values, and text from a client that decodes responses (re-encoded before it is cut).
"""

from __future__ import annotations

from typing import Any


def unpack(packed: bytes) -> list[bytes]:
    """The parts of a packed string; ``ValueError`` when it is not one (no ``;``, a length
    that is not a number, or lengths that do not add up to the bytes after the ``;``)."""
    semi = packed.find(b";")
    if semi <= 0:
        return [] if packed == b";" else _damaged(packed)
    try:
        sizes = [int(size) for size in packed[:semi].split(b",")]
    except ValueError:
        return _damaged(packed)
    parts = []
    pos = semi + 1
    for size in sizes:
        end = pos + size
        parts.append(packed[pos:end])
        pos = end
    return parts if pos == len(packed) else _damaged(packed)


def _damaged(packed: bytes) -> list[bytes]:
    raise ValueError(f"a packed reply whose lengths do not match its {len(packed)} bytes")


def packed_pairs(blob: bytes | str | None) -> list[tuple[str, Any]]:
    """A packed [name, value, ...] as (str name, value) pairs in order; nothing for an empty
    reply. Values stay bytes, or str when the client decodes responses (as the elements of an
    array reply would have been)."""
    if not blob:
        return []
    parts = unpack(blob.encode("utf-8") if isinstance(blob, str) else blob)
    if len(parts) % 2:
        raise ValueError("a packed reply has a name without a value")
    names = [name.decode("utf-8") for name in parts[0::2]]
    values: list[Any] = parts[1::2]
    if isinstance(blob, str):
        values = [value.decode("utf-8") for value in values]
    return list(zip(names, values, strict=True))
