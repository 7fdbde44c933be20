"""The resume view's response without decoding and re-encoding every section.

The library's resume view decodes each stored section (``json.loads``) and the response then
encoded them all again (``model_dump_json``): ~20 us of a view of four 2 KB sections, on
every resume. Stored sections are already the JSON the library's codec wrote, so the response
splices them in as they are, once each has been checked to be strict JSON (the C parser of
pydantic-core, ~0.5 us per 2 KB). A stored value that is not strict JSON (written by something
else than the library: ``NaN``, another encoding) takes the old way, decoded and re-encoded,
so the answer is what it always was; one that does not decode at all is ``corrupt``, as in the
library.

The sections come through the library's own ``resume_view(model=...)`` (same op, budget,
spans, metrics and events): :class:`RawSection` is the "model" each section is validated into.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Self

from pydantic import BaseModel, TypeAdapter
from pydantic_core import from_json

from sidecar.models import ResumeView

_ANY: TypeAdapter[Any] = TypeAdapter(Any)
_STR: TypeAdapter[str] = TypeAdapter(str)


class RawSection(BaseModel):
    """A stored section's JSON bytes, checked, for splicing into a response."""

    data: bytes

    @classmethod
    def model_validate_json(
        cls, json_data: str | bytes | bytearray, *, strict: bool | None = None,
        extra: Any = None, context: Any | None = None, by_alias: bool | None = None,
        by_name: bool | None = None,
    ) -> Self:  # fmt: skip
        """``json_data`` as it is when it is strict JSON, else re-encoded as the library's
        decode-then-encode did; raises ``ValueError`` (the library: ``corrupt``) when it does
        not decode."""
        raw = json_data if isinstance(json_data, bytes) else bytes(json_data, "utf-8")  # type: ignore[arg-type]
        try:
            from_json(raw, allow_inf_nan=False)
        except ValueError:
            raw = _ANY.dump_json(json.loads(raw))  # what decode + model_dump_json made of it
        return cls.model_construct(data=raw)  # type: ignore[return-value]


@functools.lru_cache(maxsize=4096)
def _name(section: str) -> bytes:
    return _STR.dump_json(section)


def view_json(view: ResumeView) -> bytes:
    """The bytes ``view.model_dump_json()`` gave when its sections were decoded values."""
    parts = [b'{"sections":{']
    for i, (name, section) in enumerate(view.sections.items()):
        if i:
            parts.append(b",")
        parts += (_name(name), b":", section.data)
    parts += (b"},", view.model_dump_json(exclude={"sections"}).encode()[1:])
    return b"".join(parts)
