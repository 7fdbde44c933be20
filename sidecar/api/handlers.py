"""The API's verbs: each handler validates, calls the shared :class:`~sidecar.Checkpointer`
(through the same budget, breaker, spans and histograms as a library call) and answers.

Handlers raise library errors or :class:`~sidecar.api.problems.Problem`; the app maps both to
``application/problem+json``. Identifiers are validated by :mod:`sidecar.keys` (the manager
builds the run's keys from them), so an id the library refuses is refused here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sidecar.api.http import BODY_TIMEOUT_S, JSON_TYPE, NO_CONTENT, Request, Response, parse_json
from sidecar.api.problems import Problem
from sidecar.api.view import view_json
from sidecar.checkpointer import Checkpointer
from sidecar.codec import STORED_JSON
from sidecar.keys import validate_section
from sidecar.manager import CheckpointManager

OWNER_HEADER = b"checkpoint-owner"
FENCE_HEADER = b"checkpoint-fence"
MAX_OWNER_CHARS = 128
OUTCOMES = ("completed", "failed")
MANAGER_CACHE = 4096  # runs whose manager is kept between requests


@dataclass(frozen=True, slots=True)
class Ids:
    """The (user, run) of a request: what the library's ``ContextLike`` asks for."""

    user_id: str
    run_id: str


@dataclass(slots=True)
class Api:
    """What every handler shares: the one Checkpointer and the limits it enforces."""

    cp: Checkpointer
    openapi: bytes = b"{}"
    body_timeout_s: float = BODY_TIMEOUT_S  # a body must arrive whole within this

    _managers: dict[tuple[str, str], CheckpointManager] = field(default_factory=dict)

    @property
    def body_limit(self) -> int:
        return self.cp.config.max_section_bytes

    def manager(self, ids: Ids) -> CheckpointManager:
        """The run's manager, kept for the next request of the same run (building one
        validates and encodes the ids and hashes the slot: ~20 us, on every request)."""
        key = (ids.user_id, ids.run_id)
        found = self._managers.get(key)
        if found is None:
            found = self.cp.manager(ids)  # raises InvalidIdentifier: nothing cached
            if len(self._managers) >= MANAGER_CACHE:
                del self._managers[next(iter(self._managers))]  # the oldest
            self._managers[key] = found
        return found


def _ids(req: Request) -> Ids:
    return Ids(req.params["user"], req.params["run"])


def _lease(req: Request) -> tuple[str, int] | None:
    """``(owner, fence)`` from the Checkpoint-Owner / Checkpoint-Fence headers, None when
    neither is sent."""
    if req.header(OWNER_HEADER) is None and req.header(FENCE_HEADER) is None:
        return None
    return _required_lease(req)


def _required_lease(req: Request) -> tuple[str, int]:
    owner, fence = req.header(OWNER_HEADER), req.header(FENCE_HEADER)
    if owner is None or fence is None:
        raise Problem(
            "invalid_request",
            "send both Checkpoint-Owner and Checkpoint-Fence, as the lease acquire returned them",
        )
    if not owner or len(owner) > MAX_OWNER_CHARS:
        raise Problem("invalid_request", f"Checkpoint-Owner must be 1-{MAX_OWNER_CHARS} chars")
    if not fence.isascii() or not fence.isdigit() or len(fence) > 18 or int(fence) < 1:
        raise Problem("invalid_request", "Checkpoint-Fence must be a positive integer")
    return owner, int(fence)


async def save_section(api: Api, req: Request) -> Response:
    section = validate_section(req.params["section"])
    ids = _ids(req)
    lease = _lease(req)
    mgr = api.manager(ids)  # validates the ids before the body is read
    content = parse_json(await req.body(api.body_limit, api.body_timeout_s))
    if lease is None:
        await mgr.save_section(section, content)
    else:
        owner, fence = lease
        await api.cp.attach(ids, owner=owner, fencing_token=fence).save(section, content)
    return NO_CONTENT


async def load_section(api: Api, req: Request) -> Response:
    section = validate_section(req.params["section"])
    value = await api.manager(_ids(req)).load_section(section)
    if value is None:
        raise Problem("section_not_found", "no checkpoint of this section in this run")
    return Response.json(200, value)


async def resume_view(api: Api, req: Request) -> Response:
    view = await api.manager(_ids(req)).resume_view(STORED_JSON)  # sections as stored JSON
    if view is None:
        raise Problem("run_not_found", "this run has no checkpoints (never saved, or expired)")
    return Response(200, view_json(view), JSON_TYPE)


async def cleanup(api: Api, req: Request) -> Response:
    await api.manager(_ids(req)).cleanup()
    return NO_CONTENT


def _plan(raw: bytes) -> list[str] | None:
    if not raw.strip():
        return None
    doc: Any = parse_json(raw)
    if not isinstance(doc, dict):
        raise Problem("invalid_body", 'the body must be a JSON object: {"plan": [...]}')
    plan = doc.get("plan")
    if plan is None:
        return None
    if not isinstance(plan, list) or not all(isinstance(s, str) for s in plan):
        raise Problem("invalid_body", "plan must be a list of section names")
    return [validate_section(s) for s in plan]


async def acquire(api: Api, req: Request) -> Response:
    ids = _ids(req)
    api.manager(ids)  # validates the ids before the body is read
    plan = _plan(await req.body(api.body_limit, api.body_timeout_s))
    run = api.cp.run(ids, plan)
    await run.acquire()
    return Response.json(
        201,
        {
            "owner": run.owner,
            "fencing_token": run.fencing_token,
            "lease_ttl_ms": api.cp.config.lease_ttl_ms,
            "resumed": run.resumed,
            "restored": run.restored,
            "remaining": run.remaining,
        },
    )


async def renew(api: Api, req: Request) -> Response:
    owner, fence = _required_lease(req)
    await api.cp.attach(_ids(req), owner=owner, fencing_token=fence).renew()
    return NO_CONTENT


async def release(api: Api, req: Request) -> Response:
    outcome = req.query().get("outcome")
    if outcome not in OUTCOMES:
        raise Problem("invalid_request", "outcome must be completed or failed")
    owner, fence = _required_lease(req)
    run = api.cp.attach(_ids(req), owner=owner, fencing_token=fence)
    if outcome == "completed":
        await run.complete()
    else:
        await run.fail()
    return NO_CONTENT


async def openapi(api: Api, req: Request) -> Response:
    return Response(200, api.openapi, b"application/json")
