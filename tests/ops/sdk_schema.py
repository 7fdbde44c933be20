"""Grafana's dashboard JSON schema, derived from the models of ``grafana-foundation-sdk``.

No ``grafana-foundation-sdk`` release on PyPI (0.0.1 to 0.0.21, wheels and sdists) ships
``jsonschema/dashboard.jsonschema.json``; it lives only in the SDK's source repository. The
package does ship Python models generated (by cog) from the same Grafana schema: one class per
schema object, whose ``to_json`` names every JSON property (unconditionally written properties
are the required ones) and whose annotations give the types. This module turns those classes
into a draft-07 JSON schema with ``additionalProperties: false`` on every object, the same
strictness as the published schema: an unknown key, a ``null``, a string datasource or a
string where a number belongs is rejected.

Free-form parts of the model stay free-form here too (panel ``options``, ``fieldConfig.custom``,
query targets): that is where panel plugins keep their own options.
"""

from __future__ import annotations

import enum
import inspect
import re
import types
import typing
import warnings
from typing import Any

_OPTIONAL_KEY = re.compile(r'payload\["(\w+)"\] = self\.(\w+)')
_REQUIRED_KEY = re.compile(r'^\s*"(\w+)": self\.(\w+),?$', re.MULTILINE)


def _models() -> types.ModuleType:
    with warnings.catch_warnings():
        # the SDK marks the v1 Dashboard deprecated in favour of v2 at class creation
        warnings.simplefilter("ignore", DeprecationWarning)
        from grafana_foundation_sdk.models import dashboard

    return dashboard


class _Builder:
    def __init__(self) -> None:
        self.definitions: dict[str, dict[str, Any]] = {}

    def ref(self, cls: type) -> dict[str, Any]:
        name = f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"
        if name not in self.definitions:
            self.definitions[name] = {}  # placeholder against recursion
            self.definitions[name] = self._object(cls)
        return {"$ref": f"#/definitions/{name}"}

    def _object(self, cls: type) -> dict[str, Any]:
        source = inspect.getsource(cls.to_json)  # type: ignore[attr-defined]
        module = inspect.getmodule(cls)
        hints = typing.get_type_hints(cls, vars(module) if module else None)
        properties: dict[str, Any] = {}
        required = []
        for key, attr in _REQUIRED_KEY.findall(source):
            properties[key] = self.type_schema(hints[attr])
            required.append(key)
        for key, attr in _OPTIONAL_KEY.findall(source):
            properties[key] = self.type_schema(hints[attr])
        out: dict[str, Any] = {
            "type": "object",
            "additionalProperties": False,
            "properties": properties,
        }
        if required:
            out["required"] = required
        return out

    def type_schema(self, hint: Any) -> dict[str, Any]:
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin in (typing.Union, types.UnionType):
            members = [a for a in args if a is not type(None)]
            if len(members) == 1:
                return self.type_schema(members[0])  # Optional: absent, never null
            return {"anyOf": [self.type_schema(a) for a in members]}
        if origin is typing.Literal:
            return {"enum": list(args)}
        if origin is list:
            return {"type": "array", "items": self.type_schema(args[0]) if args else {}}
        if origin is dict:
            return {"type": "object"}
        if hint is bool:
            return {"type": "boolean"}
        if hint is int:
            return {"type": "integer"}
        if hint is float:
            return {"type": "number"}
        if hint is str:
            return {"type": "string"}
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return {"enum": [m.value for m in hint]}
        if isinstance(hint, type) and hasattr(hint, "to_json") and hasattr(hint, "from_json"):
            if "variants" in hint.__module__:  # Dataquery: any query of any datasource
                return {"type": "object"}
            return self.ref(hint)
        return {}  # object / Any: free-form


def dashboard_schema() -> dict[str, Any]:
    """A draft-07 schema of a Grafana (v1, ``schemaVersion``) dashboard."""
    builder = _Builder()
    root = builder.ref(_models().Dashboard)
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        **root,
        "definitions": builder.definitions,
    }
