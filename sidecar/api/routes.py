"""The route table: one entry per method and path template, with what OpenAPI says about it.

The app routes from this table and :mod:`sidecar.api.openapi` describes it, so the published
description cannot drift from what is served. Paths are matched segment by segment on the raw
(still percent-encoded) path: an id may contain ``/`` (as ``%2F``), ``..`` or braces and is
still one segment, decoded strictly as UTF-8 only after the split.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from sidecar.api import handlers
from sidecar.api.handlers import Api
from sidecar.api.http import Request, Response, decode_segment
from sidecar.api.problems import Problem

Handler = Callable[[Api, Request], Awaitable[Response]]
PARAM_NAMES: Final = {"user": "user id", "run": "run id", "section": "section name"}


@dataclass(frozen=True, slots=True)
class Doc:
    """What OpenAPI publishes about a route (see :mod:`sidecar.api.openapi`)."""

    operation_id: str
    summary: str
    ok: tuple[int, str, str | None]  # status, description, response schema (None: no body)
    errors: tuple[str, ...]  # problem codes this route can answer, besides the common ones
    body: str | None = None  # request body schema name
    body_required: bool = False
    lease_headers: str = ""  # "", "optional" or "required"
    query: tuple[str, ...] = ()
    redis: bool = True  # talks to Redis: may answer 503 / 504


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    template: str
    handler: Handler
    doc: Doc
    segments: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.template.strip("/").split("/")))


RUN = "/v1/runs/{user}/{run}"
SECTION = RUN + "/sections/{section}"
LEASE = RUN + "/lease"

ROUTES: Final[tuple[Route, ...]] = (
    Route("PUT", SECTION, handlers.save_section, Doc(
        "saveSection", "Save one section (body: its JSON content); under a lease, fenced",
        (204, "Saved: Redis confirmed the write", None),
        ("invalid_identifier", "invalid_body", "invalid_request", "lease_lost",
         "section_too_large"),
        body="SectionContent", body_required=True, lease_headers="optional",
    )),
    Route("GET", SECTION, handlers.load_section, Doc(
        "loadSection", "Load one section",
        (200, "The section's JSON content", "SectionContent"),
        ("invalid_identifier", "section_not_found"),
    )),
    Route("GET", RUN, handlers.resume_view, Doc(
        "getRun", "Resume view: sections in completion order, progress, age",
        (200, "The run's checkpoints", "ResumeView"),
        ("invalid_identifier", "run_not_found"),
    )),
    Route("DELETE", RUN, handlers.cleanup, Doc(
        "deleteRun", "Delete every checkpoint of the run (cleanup)",
        (204, "Deleted (or there was nothing)", None),
        ("invalid_identifier",),
    )),
    Route("POST", LEASE, handlers.acquire, Doc(
        "acquireLease", "Acquire the run's lease and restore its sections in one round trip",
        (201, "Lease acquired: send owner and fencing_token with every later lease call",
         "Lease"),
        ("invalid_identifier", "invalid_body", "lease_held", "section_too_large"),
        body="LeaseRequest",
    )),
    Route("PUT", LEASE, handlers.renew, Doc(
        "renewLease", "Renew the lease (for lease_ttl_ms more)",
        (204, "Renewed", None),
        ("invalid_identifier", "invalid_request", "lease_lost"),
        lease_headers="required",
    )),
    Route("DELETE", LEASE, handlers.release, Doc(
        "releaseLease",
        "Finish the attempt: completed deletes the run's checkpoints (fenced), failed releases "
        "the lease and keeps them for the next attempt",
        (204, "Released", None),
        ("invalid_identifier", "invalid_request", "lease_lost"),
        lease_headers="required", query=("outcome",),
    )),
    Route("GET", "/v1/openapi.json", handlers.openapi, Doc(
        "getOpenApi", "This OpenAPI 3.1 description",
        (200, "The OpenAPI description", "OpenApi"), (), redis=False,
    )),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Shape:
    """The routes sharing one path template (its literal segments), by method."""

    literals: tuple[tuple[int, str], ...]  # (position, text) of each literal segment
    params: tuple[tuple[int, str], ...]  # (position, name) of each parameter
    by_method: dict[str, Route]

    def fits(self, parts: list[str]) -> bool:
        return all(parts[i] == text for i, text in self.literals)

    def decode(self, parts: list[str]) -> dict[str, str]:
        return {name: decode_segment(parts[i], PARAM_NAMES[name]) for i, name in self.params}


def _shapes() -> dict[int, tuple[_Shape, ...]]:
    """Routes grouped by segment count, then by template (a dict lookup per request, not a
    walk over every route: this runs on every request)."""
    by_template: dict[tuple[str, ...], dict[str, Route]] = {}
    for route in ROUTES:
        by_template.setdefault(route.segments, {})[route.method] = route
    shapes: dict[int, list[_Shape]] = {}
    for segments, by_method in by_template.items():
        literals = tuple((i, s) for i, s in enumerate(segments) if s[0] != "{")
        params = tuple((i, s[1:-1]) for i, s in enumerate(segments) if s[0] == "{")
        shapes.setdefault(len(segments), []).append(_Shape(literals, params, by_method))
    return {n: tuple(found) for n, found in shapes.items()}


_BY_LENGTH: Final[dict[int, tuple[_Shape, ...]]] = _shapes()
ROUTE_CACHE: Final = 4096  # resolved paths kept by a Router (as many as the API's managers)
MAX_CACHED_PATH: Final = 512  # bytes; longer paths (hostile ones) are resolved every time


def resolve(method: str, raw_path: bytes) -> tuple[Route, dict[str, str]]:
    """The route and decoded parameters of a request; 404 / 405 problems otherwise."""
    try:
        path = raw_path.decode("ascii")
    except UnicodeDecodeError:
        raise Problem("not_found", "the path is not ASCII; percent-encode the ids") from None
    parts = path[1:].split("/") if path.startswith("/") else path.split("/")
    allowed: list[str] = []
    for shape in _BY_LENGTH.get(len(parts), ()):
        if not shape.fits(parts):
            continue
        route = shape.by_method.get(method)
        if route is None:
            allowed += shape.by_method
            continue
        return route, shape.decode(parts)
    if allowed:
        raise Problem(
            "method_not_allowed",
            f"{method} is not served here; allowed: {', '.join(allowed)}",
            headers=[(b"allow", ", ".join(allowed).encode())],
        )
    raise Problem("not_found", "no such route; see GET /v1/openapi.json")


class Router:
    """:func:`resolve` with the answers for recent paths kept (an agent's requests repeat its
    run's few paths; resolving one again cost ~10 us in the API's hop, a lookup ~0.2 us).

    Only paths that resolve are kept (a refused one raises again each time), at most
    ``ROUTE_CACHE`` of them, each at most ``MAX_CACHED_PATH`` bytes long; the oldest goes
    first. The params dict is shared by the requests of one path: handlers only read it.
    """

    def __init__(self) -> None:
        self._resolved: dict[tuple[str, bytes], tuple[Route, dict[str, str]]] = {}

    def resolve(self, method: str, raw_path: bytes) -> tuple[Route, dict[str, str]]:
        key = (method, raw_path)
        found = self._resolved.get(key)
        if found is None:
            found = resolve(method, raw_path)
            if len(raw_path) <= MAX_CACHED_PATH:
                if len(self._resolved) >= ROUTE_CACHE:
                    del self._resolved[next(iter(self._resolved))]
                self._resolved[key] = found
        return found
