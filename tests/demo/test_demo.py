"""The demo as a newcomer runs it (a subprocess), the example agent, and the failure plan."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import redis.asyncio as aioredis
from leftovers import only_done_keys_left

from sidecar.demo.scenario import SHARES, plan_runs

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "reporting_agent.py"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start_demo(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    out = tmp_path / "demo.out"
    summary = tmp_path / "summary.json"
    command = [sys.executable, "-m", "sidecar", "demo", "--metrics-port", "0",
               "--plain", "--json", str(summary), *args]  # fmt: skip
    with out.open("wb") as sink:  # a file, never an unread PIPE
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=_env())
    return proc, out, summary


def _metrics_url(out: Path, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        found = re.search(r"metrics: (http://\S+/metrics)", out.read_text())
        if found:
            return found.group(1)
        time.sleep(0.05)
    raise AssertionError(f"the demo printed no metrics URL:\n{out.read_text()}")


def _finish(proc: subprocess.Popen[bytes], out: Path, summary: Path) -> dict[str, Any]:
    try:
        code = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.read_text()
    assert code == 0, text
    assert "checkpoint-sidecar demo: summary" in text
    assert "TTL expiries seen" in text
    data: dict[str, Any] = json.loads(summary.read_text())
    return data


def test_demo_on_the_embedded_server_resumes_expires_and_serves_metrics(tmp_path: Path) -> None:
    proc, out, summary = _start_demo(tmp_path, "--runs", "12", "--seed", "3")
    url = _metrics_url(out, proc)
    with urllib.request.urlopen(url, timeout=5) as response:
        body = response.read().decode()
    assert response.status == 200
    assert "checkpoint_ttl_expiries_total" in body  # the sidecar's watcher, served live
    data = _finish(proc, out, summary)
    assert data["runs"] == 12
    assert data["completed"] + data["abandoned"] == 12
    assert data["failed"] == 0
    assert data["resumed_runs"] > 0
    assert data["sections_restored"] > 0
    assert data["llm_seconds_saved"] > 0
    assert data["abandoned"] > 0
    assert data["ttl_expiries_seen"] > 0
    assert data["metrics_served"] is True
    assert data["redis"] == "embedded"
    ops = {row["operation"]: row for row in data["latency"]}
    assert ops["save_section"]["calls"] >= data["sections_produced"]


def test_demo_slow_redis_shows_budget_timeouts_and_the_breaker(tmp_path: Path) -> None:
    proc, out, summary = _start_demo(
        tmp_path, "--runs", "16", "--slow-redis", "1.2", "--abandon-ttl", "1"
    )
    data = _finish(proc, out, summary)
    assert data["redis_pauses"] == 1
    assert data["failed"] == 0  # the agents never stall on a frozen Redis: they go on without
    assert data["timeouts"] > 0
    assert data["budget_breaches"] > 0
    assert data["breaker_openings"] >= 1
    assert data["skipped_by_breaker"] > 0
    text = out.read_text()
    assert "circuit open" in text
    assert "circuit closed" in text


async def test_demo_on_a_given_redis_touches_only_its_own_prefix(
    tmp_path: Path, redis_url: str
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    await client.flushall()
    await client.set("someone:else", "keep me")
    proc, out, summary = _start_demo(
        tmp_path, "--runs", "6", "--redis-url", redis_url, "--abandon-ttl", "1"
    )
    data = _finish(proc, out, summary)
    assert data["redis"] == "external"
    assert await client.get("someone:else") == b"keep me"
    keys = [k.decode() async for k in client.scan_iter(count=1000)]
    assert all(k == "someone:else" or k.startswith("ckpt-demo:") for k in keys), keys
    await client.aclose()


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reporting_agent_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


async def test_example_runs_on_its_own_and_resumes(redis_url: str) -> None:
    example = _load_example()
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.flushall()
        result = await example.main(redis_url, quiet=True)
        assert result["success"] is True
        assert result["checkpoints_used"] is True
        assert result["resumed_sections"] == 2
        assert list(result["report"]) == list(example.SECTIONS)
        assert all(len(section["body"]) > 1500 for section in result["report"].values())
        assert await only_done_keys_left(client)  # cleanup after success
    finally:
        await client.aclose()


def test_the_demo_drives_the_example_file() -> None:
    shipped = ROOT / "sidecar" / "demo" / "reporting_agent.py"
    assert shipped.read_bytes() == EXAMPLE.read_bytes()


def test_failure_plan_is_reproducible_and_shows_every_behaviour() -> None:
    first, again, other = plan_runs(40, 7), plan_runs(40, 7), plan_runs(40, 8)
    assert first == again
    assert first != other
    kinds = [p.kind for p in first]
    for kind in SHARES:
        assert kind in kinds
    small = [p.kind for p in plan_runs(4, 1)]
    assert {"crash", "timeout", "abandoned"} <= set(small)
    assert all(p.faults for p in first if p.kind != "clean")
