"""The OpenAPI 3.1 description, generated from the route table (:data:`routes.ROUTES`).

``python -m sidecar.api.openapi > docs/openapi.json`` writes the checked-in copy; a test keeps
the two equal, and the API serves the same document at ``GET /v1/openapi.json``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from sidecar import __version__
from sidecar.api.problems import CODES, PROBLEM_TYPE
from sidecar.api.routes import ROUTES, Doc, Route
from sidecar.keys import MAX_ID_CHARS, MAX_SECTION_CHARS

Schema = dict[str, Any]
COMMON_ERRORS = ("unauthorized",)
REDIS_ERRORS = ("unavailable", "budget_exceeded")
RETRY_AFTER = ("lease_held", "unavailable")

_ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}
_SECTION = {"type": "string", "minLength": 1, "maxLength": MAX_SECTION_CHARS}
PARAMS: dict[str, Schema] = {
    "user": {"description": "User id (percent-encoded; any text up to 256 characters)",
             "schema": _ID},
    "run": {"description": "Run id (percent-encoded; any text up to 256 characters)",
            "schema": _ID},
    "section": {"description": "Section name (percent-encoded; up to 200 characters)",
                "schema": _SECTION},
}  # fmt: skip

SCHEMAS: dict[str, Schema] = {
    "SectionContent": {"description": "Any JSON value: the section's content."},
    "Progress": {
        "type": "object",
        "properties": {
            "completed_sections": {"type": "array", "items": {"type": "string"}},
            "in_progress": {"type": ["string", "null"]},
            "total_sections": {"type": "integer", "minimum": 0},
            "last_update": {"type": ["string", "null"], "format": "date-time"},
        },
        "required": ["completed_sections", "in_progress", "total_sections", "last_update"],
    },
    "ResumeView": {
        "type": "object",
        "properties": {
            "sections": {
                "type": "object",
                "description": "name -> content, in completion order",
                "additionalProperties": True,
            },
            "progress": {"$ref": "#/components/schemas/Progress"},
            "age_seconds": {
                "type": ["number", "null"],
                "description": "seconds since the last save, by the Redis server's clock",
            },
        },
        "required": ["sections", "progress", "age_seconds"],
    },
    "LeaseRequest": {
        "type": "object",
        "properties": {"plan": {"type": "array", "items": _SECTION}},
    },
    "Lease": {
        "type": "object",
        "properties": {
            "owner": {"type": "string", "description": "send as Checkpoint-Owner"},
            "fencing_token": {
                "type": "integer", "minimum": 1, "description": "send as Checkpoint-Fence"
            },
            "lease_ttl_ms": {"type": "integer", "minimum": 1},
            "resumed": {"type": "boolean"},
            "restored": {"type": "object", "additionalProperties": True},
            "remaining": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["owner", "fencing_token", "lease_ttl_ms", "resumed", "restored",
                     "remaining"],
    },
    "OpenApi": {"type": "object", "description": "An OpenAPI 3.1 document"},
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details; branch on code",
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "code": {"type": "string", "enum": sorted(CODES)},
            "detail": {"type": "string"},
            "limit": {"type": "integer", "description": "section_too_large: the byte limit"},
        },
        "required": ["type", "title", "status", "code", "detail"],
    },
}  # fmt: skip


def _lease_headers(mode: str) -> list[Schema]:
    if not mode:
        return []
    required = mode == "required"
    return [
        {"name": "Checkpoint-Owner", "in": "header", "required": required,
         "description": "owner returned by the lease acquire",
         "schema": {"type": "string", "minLength": 1, "maxLength": 128}},
        {"name": "Checkpoint-Fence", "in": "header", "required": required,
         "description": "fencing_token returned by the lease acquire",
         "schema": {"type": "integer", "minimum": 1}},
    ]  # fmt: skip


def _problem_response(status: int, codes: list[str]) -> Schema:
    response: Schema = {
        "description": " / ".join(codes),
        "content": {PROBLEM_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if any(code in RETRY_AFTER for code in codes):
        response["headers"] = {
            "Retry-After": {
                "description": "seconds to wait before trying again",
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    return response


def _responses(doc: Doc) -> dict[str, Schema]:
    status, description, schema = doc.ok
    ok: Schema = {"description": description}
    if schema is not None:
        ok["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}
    out: dict[str, Schema] = {str(status): ok}
    codes = [*doc.errors, *COMMON_ERRORS, *(REDIS_ERRORS if doc.redis else ())]
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(CODES[code][0], []).append(code)
    for code_status in sorted(by_status):
        out[str(code_status)] = _problem_response(code_status, by_status[code_status])
    return out


def _operation(route: Route) -> Schema:
    doc = route.doc
    params: list[Schema] = [
        {"name": name[1:-1], "in": "path", "required": True, **PARAMS[name[1:-1]]}
        for name in route.segments if name.startswith("{")
    ]  # fmt: skip
    params += _lease_headers(doc.lease_headers)
    params += [
        {"name": q, "in": "query", "required": True,
         "schema": {"type": "string", "enum": ["completed", "failed"]}}
        for q in doc.query
    ]  # fmt: skip
    op: Schema = {"operationId": doc.operation_id, "summary": doc.summary}
    if params:
        op["parameters"] = params
    if doc.body is not None:
        op["requestBody"] = {
            "required": doc.body_required,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{doc.body}"}}
            },
        }
    op["responses"] = _responses(doc)
    return op


def build() -> Schema:
    """The OpenAPI 3.1 document of every route in :data:`ROUTES`."""
    paths: dict[str, Schema] = {}
    for route in ROUTES:
        paths.setdefault(route.template, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "checkpoint-sidecar HTTP API",
            "version": __version__,
            "description": (
                "Checkpoints of long-running agent runs, served by `checkpoint-sidecar serve`. "
                "Errors are application/problem+json with a stable `code`. A bearer token is "
                "required when the API listens on anything but loopback or a Unix socket."
            ),
        },
        "servers": [{"url": "http://127.0.0.1:9465"}],
        "security": [{}, {"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def render() -> bytes:
    """The document as the checked-in ``docs/openapi.json`` holds it."""
    return (json.dumps(build(), indent=2, sort_keys=False) + "\n").encode()


if __name__ == "__main__":
    sys.stdout.buffer.write(render())
