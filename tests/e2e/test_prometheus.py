"""Proof against reality: every dashboard query and every rule, asked of a real Prometheus.

A private Valkey server, the sidecar (in-process, its own ``/metrics``), an agent workload on a
``Checkpointer`` whose registry is served on a second port (same job, another instance), and
Debian's Prometheus scraping both every second with exemplar storage on. The workload has
runs that complete, runs that fail and resume, runs abandoned with a 1-second TTL (their lease
left to lapse), and a stretch where Redis is frozen (SIGSTOP) so calls time out, blow the
budget and open the circuit breaker.

Then every PromQL expression of every dashboard panel, every recording rule and every alert
(without its final comparison, or inside its ``absent()``) must parse and return data, and the
latency histogram must come back with an exemplar whose trace id is one of our spans.

Metrics that no code on this branch emits yet (:data:`NOT_EMITTED_YET`: the elected counting
watcher, run evictions, stored section bytes) cannot return data here: expressions reading
them must parse, and must return data as soon as Prometheus has any series of the metric, so
the check tightens by itself when the code that emits them lands.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import re
import shutil
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, start_http_server

from sidecar import CheckpointConfig, Checkpointer, CheckpointFactory, RunContext, names
from sidecar.ops import render_overview_png
from sidecar.ops.render import grafana_to_promql
from sidecar.ops.rules import DEFAULT_BUDGET_MS, DEFAULT_SLO, alerts
from sidecar.server.embedded import EmbeddedServer, free_port
from sidecar.server.runtime import Sidecar
from tests.ops.conftest import REPO, require_tool

from .prom import api, running_prometheus

RATE_INTERVAL = "1m"  # covers the whole workload
PLAN = ["plan", "draft", "final"]
NOT_EMITTED_YET = (names.WATCHER_COUNTING, names.RUN_EVICTIONS, names.SECTION_STORED_BYTES)


class AgentFailed(Exception):
    """The simulated agent crash in the middle of a run."""


@pytest.fixture
def valkey(server_binary: str) -> Iterator[EmbeddedServer]:
    """A server of our own: this test freezes it, which must not disturb other tests."""
    with EmbeddedServer(binary=server_binary) as server:
        yield server


def _config(url: str, **overrides: Any) -> CheckpointConfig:
    base: dict[str, Any] = {
        "redis_url": url,
        "budget_ms": DEFAULT_BUDGET_MS,
        "breaker_failures": 5,
        # longer than the 1 s scrape interval: an opening holds checkpoint_circuit_open at 1
        # for a whole cooldown, so at least one scrape sees it (with 0.5 s, two openings could
        # both fall between scrapes: seen once in CI)
        "breaker_cooldown_s": 1.5,
        "lease_ttl_seconds": 5,
    }
    return CheckpointConfig(**{**base, **overrides})


async def _one_run(cp: Checkpointer, user: str, run_id: str, *, fail: bool) -> None:
    async def produce(step: str) -> dict[str, Any]:
        await asyncio.sleep(0.005)
        return {"step": step, "text": "x" * (200 * len(step))}

    with contextlib.suppress(AgentFailed):
        async with cp.run(RunContext(user_id=user, run_id=run_id), plan=PLAN) as run:
            for section in PLAN:
                await run.step(section, lambda s=section: produce(s))
                if fail and section == "draft":
                    raise AgentFailed(run_id)


async def _workload(cp: Checkpointer, stop: asyncio.Event) -> int:
    """Runs back to back; every third one crashes after two sections and is resumed."""
    count = 0
    while not stop.is_set():
        run_id = f"run-{count}"
        crash = count % 3 == 0
        await _one_run(cp, "alice", run_id, fail=crash)
        if crash:
            await _one_run(cp, "alice", run_id, fail=False)  # resumes: 2 sections restored
        count += 1
        await asyncio.sleep(0.05)
    return count


async def _abandon(cp: Checkpointer, n: int) -> None:
    """Runs whose process 'dies' holding the lease: nothing exits them or renews the lease."""
    for i in range(n):
        run = cp.run(RunContext(user_id="bob", run_id=f"lost-{i}"), plan=PLAN)
        await run.__aenter__()
        await run.step("plan", lambda: {"partial": True})
        if run._renewer is not None:  # the renewer dies with the process
            run._renewer.cancel()


def _dashboard_expressions() -> list[tuple[str, str]]:
    found = []
    for path in sorted((REPO / "dashboards").glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                found.append((f"{path.stem} / {panel['title']}", target["expr"]))
        for variable in board["templating"]["list"]:
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", str(variable.get("query", "")))
            if match:  # the variable's values come from this selector's label
                found.append((f"{path.stem} / ${variable['name']}", match.group(1)))
    return found


def _rule_expressions() -> list[tuple[str, str]]:
    doc = yaml.safe_load((REPO / "alerts" / "checkpoint-rules.yml").read_text(encoding="utf-8"))
    rules = [r for g in doc["groups"] for r in g["rules"]]
    found = [(r["record"], r["expr"]) for r in rules if "record" in r]
    committed = {r["alert"]: r["expr"] for r in rules if "alert" in r}
    for alert in alerts(DEFAULT_BUDGET_MS, DEFAULT_SLO):
        assert committed[alert.name] == alert.expr(), "probes must be those of the rule file"
        for i, term in enumerate(alert.terms):
            found.append((f"{alert.name} term {i}", term.probe))
    assert set(committed) == {a.name for a in alerts(DEFAULT_BUDGET_MS, DEFAULT_SLO)}
    return found


async def _scalar(client: httpx.AsyncClient, expr: str) -> float:
    data = await api(client, "/api/v1/query", query=expr)
    assert data["result"], f"no data for {expr}"
    return float(data["result"][0]["value"][1])


async def test_dashboards_and_rules_against_real_prometheus(
    valkey: EmbeddedServer, tmp_path: pathlib.Path
) -> None:
    prometheus = require_tool("prometheus")
    started = time.monotonic()
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    registry = CollectorRegistry()
    agent_port = free_port()
    http_server, http_thread = start_http_server(agent_port, addr="127.0.0.1", registry=registry)

    cp = Checkpointer.from_url(
        valkey.url, config=_config(valkey.url), registry=registry, tracer_provider=tracer_provider
    )
    short = Checkpointer.from_url(
        valkey.url,
        config=_config(valkey.url, ttl_seconds=1, lease_ttl_seconds=1),
        registry=registry,
        tracer_provider=tracer_provider,
    )
    try:
        async with Sidecar(valkey.url, port=0, health_interval=0.5) as sidecar:
            targets = [f"127.0.0.1:{agent_port}", f"127.0.0.1:{sidecar.port}"]
            rule_file = REPO / "alerts" / "checkpoint-rules.yml"
            with running_prometheus(prometheus, tmp_path, targets, rule_file) as prom:
                async with httpx.AsyncClient(base_url=prom.url, timeout=10) as client:
                    stop = asyncio.Event()
                    load = asyncio.create_task(_workload(cp, stop))
                    await asyncio.sleep(3)
                    await _abandon(short, 4)
                    await asyncio.sleep(2)
                    valkey.pause()  # every call now times out at the budget
                    await asyncio.sleep(1.5)
                    valkey.resume()
                    await asyncio.sleep(6)  # breaker closes, expiries are seen, scrapes land
                    stop.set()
                    runs = await load
                    await asyncio.sleep(2.5)  # final scrapes of the final counters
                    workload_s = time.monotonic() - started
                    await _check_everything(client, runs, spans)
                    await _check_rules_loaded(client)
                    png = render_overview_png(prom.url, tmp_path / "overview.png", window_s=60)
                    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
                    assert png.stat().st_size > 30_000
                    if os.environ.get("SIDECAR_OVERVIEW_PNG"):
                        shutil.copy(png, os.environ["SIDECAR_OVERVIEW_PNG"])
    finally:
        await cp.aclose()
        await short.aclose()
        http_server.shutdown()
        http_server.server_close()
        http_thread.join(5)
    print(f"e2e: {runs} runs, workload {workload_s:.1f}s, total {time.monotonic() - started:.1f}s")


async def _check_everything(
    client: httpx.AsyncClient, runs: int, spans: InMemorySpanExporter
) -> None:
    # the workload did what it claims, as Prometheus saw it
    assert runs >= 10
    assert await _scalar(client, f'sum({names.RUNS_STARTED}{{mode="resumed"}})') >= 1
    assert await _scalar(client, f'sum({names.SECTIONS}{{source="restored"}})') >= 2
    assert await _scalar(client, f"sum({names.BUDGET_EXCEEDED})") >= 1
    timeouts = f'sum({names.OPERATION_DURATION}_count{{outcome="timeout"}})'
    assert await _scalar(client, timeouts) >= 1
    assert await _scalar(client, f"max(max_over_time({names.CIRCUIT_OPEN}[1m]))") == 1
    assert await _scalar(client, f"sum({names.TTL_EXPIRIES})") >= 1
    assert await _scalar(client, 'count(up{job="checkpoint"} == 1)') == 2

    absent_metrics = set()
    for metric in NOT_EMITTED_YET:
        data = await api(client, "/api/v1/query", query=f'count({{__name__=~"{metric}.*"}})')
        if not data["result"]:
            absent_metrics.add(metric)
    failures = []
    valid_only = []
    expressions = _dashboard_expressions() + _rule_expressions()
    assert len(expressions) >= 60
    for where, expr in expressions:
        query = grafana_to_promql(expr, RATE_INTERVAL)
        response = await client.get("/api/v1/query", params={"query": query})
        body = response.json()
        if body.get("status") != "success":
            failures.append(f"{where}: {body.get('error')}\n    {query}")
        elif not body["data"]["result"]:
            if any(metric in expr for metric in absent_metrics):
                valid_only.append(where)
            else:
                failures.append(f"{where}: no data\n    {query}")
    assert not failures, "\n".join(failures)
    print(f"e2e: {len(expressions)} expressions, valid only (metric not emitted): {valid_only}")

    now = time.time()
    exemplars = await api(
        client,
        "/api/v1/query_exemplars",
        query=f"{names.OPERATION_DURATION}_bucket",
        start=now - 120,
        end=now,
    )
    trace_ids = {
        e["labels"].get("trace_id") for series in exemplars for e in series["exemplars"]
    } - {None}
    ours = {format(s.context.trace_id, "032x") for s in spans.get_finished_spans()}
    assert trace_ids, "Prometheus stored no exemplar of the latency histogram"
    assert trace_ids <= ours, "exemplar trace ids must be those of our spans"


async def _check_rules_loaded(client: httpx.AsyncClient) -> None:
    groups = (await api(client, "/api/v1/rules"))["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == 23
    unhealthy = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not unhealthy


async def test_redis_outage_pends_the_page_for_a_sparse_agent(tmp_path: pathlib.Path) -> None:
    """Issue 9, item 14, with the real library: an agent whose Redis is gone emits outcomes that
    the outage record counts as "nothing done", so the page is pending within seconds of the
    first scrapes, while the circuit gauge is 1 only now and then. The promtool case
    (alerts/tests/outage.yml) plays the same series at the real pace, once every 30 s."""
    prometheus = require_tool("prometheus")
    registry = CollectorRegistry()
    agent_port = free_port()
    http_server, http_thread = start_http_server(agent_port, addr="127.0.0.1", registry=registry)
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: connection refused
    cp = Checkpointer.from_url(
        dead, config=_config(dead, breaker_cooldown_s=0.2), registry=registry
    )
    mgr = CheckpointFactory(cp).create_for_context(RunContext(user_id="u", run_id="r"))
    rule_file = REPO / "alerts" / "checkpoint-rules.yml"
    try:
        with running_prometheus(
            prometheus, tmp_path, [f"127.0.0.1:{agent_port}"], rule_file
        ) as prom:
            async with httpx.AsyncClient(base_url=prom.url, timeout=10) as client:
                pending: list[Any] = []
                deadline = time.monotonic() + 30
                saves = 0
                while not pending and time.monotonic() < deadline:
                    assert await mgr.save_section("summary", {"text": "x"}) is False
                    saves += 1
                    await asyncio.sleep(0.5)  # sparse: the cooldown ends before the next call
                    alerts_now = await api(client, "/api/v1/query", query="ALERTS")
                    pending = [
                        a for a in alerts_now["result"]
                        if a["metric"]["alertname"] == "CheckpointRedisUnavailable"
                    ]  # fmt: skip
                assert pending, f"no CheckpointRedisUnavailable after {saves} failed saves"
                print(f"e2e outage: pending after {saves} failed saves")
                assert pending[0]["metric"]["alertstate"] == "pending"  # `for: 3m` to go
                assert pending[0]["metric"]["severity"] == "critical"
                ratio = await _scalar(client, "checkpoint:operations_unavailable:ratio_rate5m")
                assert ratio == 1.0
                outcomes = await api(
                    client,
                    "/api/v1/query",
                    query=f"sum by (outcome) ({names.OPERATION_DURATION}_count)",
                )
                seen = {r["metric"]["outcome"] for r in outcomes["result"]}
                assert seen <= {names.ERROR, names.TIMEOUT, names.SKIPPED}, seen
    finally:
        await cp.aclose()
        http_server.shutdown()
        http_server.server_close()
        http_thread.join(5)
