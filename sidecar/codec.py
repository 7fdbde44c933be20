"""Section content to JSON bytes and back, through pydantic.

pydantic's serializer handles what ``json.dumps`` does not (models, datetimes, decimals, UUIDs,
enums, sets, dataclasses), and fails loudly on the rest: a save of something unserializable
raises :class:`SerializationError` and writes nothing, instead of the seed's silent ``False``.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Final

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError, from_json

from sidecar.errors import SectionTooLarge, SerializationError

_ANY: TypeAdapter[Any] = TypeAdapter(Any)


def dump(section: str, content: Any, limit: int) -> bytes:
    """Serialize content; raise SerializationError or SectionTooLarge before any I/O."""
    try:
        payload = _ANY.dump_json(content)
    except (PydanticSerializationError, ValueError, TypeError, UnicodeError) as exc:
        raise SerializationError(
            f"section {section!r}: content of type {type(content).__name__} is not serializable "
            f"as JSON ({exc})"
        ) from exc
    if len(payload) > limit:
        raise SectionTooLarge(section, len(payload), limit)
    return payload


@functools.lru_cache(maxsize=256)
def _adapter(model: Any) -> TypeAdapter[Any]:
    return TypeAdapter(model)


def parse(raw: bytes | str) -> Any:
    """JSON text to Python values, as ``json.loads`` gives them.

    pydantic-core's parser (already a dependency) is ~4x faster than ``json.loads`` on a 2 KB
    section, which a load of four sections feels. It refuses a few things ``json.loads``
    accepts (nesting deeper than its limit, lone surrogate escapes): those go to
    ``json.loads``, so what decodes, and to what, is unchanged.
    """
    try:
        return from_json(raw)
    except ValueError:
        return json.loads(raw)


class _StoredJson:
    __slots__ = ()

    def __repr__(self) -> str:
        return "STORED_JSON"


STORED_JSON: Final = _StoredJson()
"""The ``model`` that makes :func:`load` answer a section's stored JSON as bytes, not decoded
(see :func:`strict_json`): for a response that splices sections in as they are."""


def strict_json(raw: bytes | str) -> bytes:
    """``raw`` as it is when it is strict JSON (checked by pydantic-core's C parser, ~0.5 us
    for 2 KB), else what decoding and re-encoding it gives (a ``NaN`` written by something
    other than this library comes out as ``null``, as from a decoded value); ``ValueError``
    when it does not decode at all."""
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8")
    try:
        from_json(data, allow_inf_nan=False)
    except ValueError:
        return _ANY.dump_json(json.loads(data))
    return data


def load(section: str, raw: bytes | str, model: Any = None) -> Any:
    """Decode stored JSON; validate into ``model`` (a pydantic model or any type) when given;
    with :data:`STORED_JSON`, the stored JSON itself, checked."""
    try:
        if model is None:
            return parse(raw)
        if model is STORED_JSON:
            return strict_json(raw)
        if isinstance(model, type) and issubclass(model, BaseModel):
            return model.model_validate_json(raw)
        return _adapter(model).validate_json(raw)
    except (ValueError, ValidationError) as exc:
        raise SerializationError(
            f"section {section!r}: stored value does not decode: {exc}"
        ) from exc
