"""The OpenAPI 3.1 description: generated from the route table, checked in, served, complete."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import schemathesis

from sidecar.api.openapi import build, render
from sidecar.api.problems import CODES
from sidecar.api.routes import ROUTES

CHECKED_IN = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_checked_in_copy_is_the_generated_one() -> None:
    assert CHECKED_IN.read_bytes() == render(), (
        "docs/openapi.json is stale: python -m sidecar.api.openapi > docs/openapi.json"
    )


def test_every_route_is_described_its_own_included() -> None:
    doc = build()
    described = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}
    assert described == {(r.method, r.template) for r in ROUTES}
    assert ("GET", "/v1/openapi.json") in described
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)) == len(ROUTES)


def test_every_error_code_is_published() -> None:
    enum = build()["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
    assert set(enum) == set(CODES)
    for ops in build()["paths"].values():
        for op in ops.values():
            assert "401" in op["responses"]


def test_the_document_loads_as_openapi_3_1() -> None:
    schema = schemathesis.openapi.from_dict(build())
    assert len(list(schema.get_all_operations())) == len(ROUTES)


async def test_served_document_is_the_checked_in_one(http: httpx.AsyncClient) -> None:
    r = await http.get("/v1/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == json.loads(CHECKED_IN.read_text())
