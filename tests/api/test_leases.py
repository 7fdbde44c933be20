"""The lease routes: acquire + restore in one round trip, fenced saves, renew, release as
completed or failed, and the run lifecycle metrics counted like library runs."""

from __future__ import annotations

from typing import Any

import httpx
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from sidecar.keys import run_keys

from .conftest import PREFIX, assert_problem

RUN = "/v1/runs/user-1/report-1"
PLAN = ["summary", "data_analysis", "recommendations", "action_items"]


def lease_headers(lease: dict[str, Any]) -> dict[str, str]:
    return {"Checkpoint-Owner": lease["owner"], "Checkpoint-Fence": str(lease["fencing_token"])}


async def acquire(http: httpx.AsyncClient, plan: list[str] | None = PLAN) -> dict[str, Any]:
    r = await http.post(f"{RUN}/lease", json={"plan": plan} if plan is not None else None)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_crash_and_resume_through_the_api(
    http: httpx.AsyncClient, registry: CollectorRegistry
) -> None:
    first = await acquire(http)
    assert first["resumed"] is False and first["restored"] == {}
    assert first["remaining"] == PLAN and first["lease_ttl_ms"] == 60_000
    assert first["fencing_token"] >= 1 and len(first["owner"]) >= 16
    for name in PLAN[:2]:
        r = await http.put(
            f"{RUN}/sections/{name}", json={"name": name}, headers=lease_headers(first)
        )
        assert r.status_code == 204
    assert (await http.put(f"{RUN}/lease", headers=lease_headers(first))).status_code == 204
    r = await http.delete(
        f"{RUN}/lease", params={"outcome": "failed"}, headers=lease_headers(first)
    )
    assert r.status_code == 204
    assert list((await http.get(RUN)).json()["sections"]) == PLAN[:2]  # kept for the retry

    second = await acquire(http)
    assert second["resumed"] is True
    assert list(second["restored"]) == PLAN[:2]
    assert second["remaining"] == PLAN[2:]
    assert second["fencing_token"] > first["fencing_token"]
    for name in PLAN[2:]:
        r = await http.put(f"{RUN}/sections/{name}", json=name, headers=lease_headers(second))
        assert r.status_code == 204
    r = await http.delete(f"{RUN}/lease?outcome=completed", headers=lease_headers(second))
    assert r.status_code == 204
    assert_problem(await http.get(RUN), 404, "run_not_found")  # completed: cleaned up

    assert sample(registry, "checkpoint_runs_started_total", mode="fresh") == 1
    assert sample(registry, "checkpoint_runs_started_total", mode="resumed") == 1
    assert sample(registry, "checkpoint_runs_finished_total", status="failed") == 1
    assert sample(registry, "checkpoint_runs_finished_total", status="completed") == 1
    assert sample(registry, "checkpoint_sections_total", source="restored") == 2
    assert sample(registry, "checkpoint_sections_total", source="produced") == 4


async def test_a_second_attempt_gets_lease_held_with_retry_after(http: httpx.AsyncClient) -> None:
    await acquire(http)
    r = await http.post(f"{RUN}/lease")
    assert_problem(r, 409, "lease_held")
    assert 1 <= int(r.headers["retry-after"]) <= 60


async def test_a_fence_from_another_attempt_writes_nothing(
    http: httpx.AsyncClient, redis_client: aioredis.Redis
) -> None:
    stale = await acquire(http)
    r = await http.put(f"{RUN}/sections/summary", content=b'"v1"', headers=lease_headers(stale))
    assert r.status_code == 204
    r = await http.delete(f"{RUN}/lease?outcome=failed", headers=lease_headers(stale))
    assert r.status_code == 204
    current = await acquire(http)
    keys = run_keys(PREFIX, "user-1", "report-1")
    before = await redis_client.hgetall(keys.sections)
    forged = {"Checkpoint-Owner": current["owner"], "Checkpoint-Fence": str(stale["fencing_token"])}
    for headers in (
        lease_headers(stale),
        forged,
        {**lease_headers(current), "Checkpoint-Owner": "x" * 32},
    ):
        r = await http.put(f"{RUN}/sections/summary", content=b'"overwrite"', headers=headers)
        assert_problem(r, 409, "lease_lost")
    assert_problem(await http.put(f"{RUN}/lease", headers=lease_headers(stale)), 409, "lease_lost")
    r = await http.delete(f"{RUN}/lease?outcome=completed", headers=lease_headers(stale))
    assert_problem(r, 409, "lease_lost")
    assert await redis_client.hgetall(keys.sections) == before  # untouched
    assert await redis_client.get(keys.lease) == current["owner"].encode()  # still the holder's


async def test_bad_lease_requests(http: httpx.AsyncClient) -> None:
    for body in (b"[1]", b'{"plan": "summary"}', b'{"plan": [1]}', b"{"):
        assert_problem(await http.post(f"{RUN}/lease", content=body), 400, "invalid_body")
    r = await http.post(f"{RUN}/lease", json={"plan": ["x" * 201]})
    assert_problem(r, 400, "invalid_identifier")
    lease = await acquire(http, plan=None)
    assert lease["remaining"] == []
    for query in ("", "?outcome=maybe", "?outcome="):
        r = await http.delete(f"{RUN}/lease{query}", headers=lease_headers(lease))
        assert_problem(r, 400, "invalid_request")
    assert_problem(await http.delete(f"{RUN}/lease?outcome=failed"), 400, "invalid_request")
