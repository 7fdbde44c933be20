"""examples/langgraph_report.py on its own, the demo's copy of it, and ``demo --langgraph``."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import redis.asyncio as aioredis

from sidecar.server.embedded import EmbeddedServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "langgraph_report.py"


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("langgraph_report_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_example_resumes_after_the_failed_node_and_cleans_up(
    private_server: EmbeddedServer,
) -> None:
    example = _load_example()
    result = await example.main(private_server.url, quiet=True)
    assert result["success"] is True
    assert result["checkpoints_used"] is True
    assert result["resumed_sections"] == 2  # the first two nodes were not run again
    assert list(result["report"]) == list(example.SECTIONS)
    assert all(len(section["body"]) > 1500 for section in result["report"].values())
    client = aioredis.Redis.from_url(private_server.url)
    assert [k async for k in client.scan_iter()] == []  # the thread is deleted on success
    await client.aclose()


def test_the_demo_drives_the_example_file() -> None:
    shipped = ROOT / "sidecar" / "demo" / "langgraph_report.py"
    assert shipped.read_bytes() == EXAMPLE.read_bytes()


@pytest.mark.timeout(150)
def test_demo_langgraph_runs_the_graph_with_the_same_board(tmp_path: Path) -> None:
    out, summary = tmp_path / "demo.out", tmp_path / "summary.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    command = [sys.executable, "-m", "sidecar", "demo", "--langgraph", "--runs", "8",
               "--metrics-port", "0", "--plain", "--json", str(summary)]  # fmt: skip
    with out.open("wb") as sink:  # a file, never an unread PIPE
        code = subprocess.run(
            command, stdout=sink, stderr=subprocess.STDOUT, env=env, timeout=140, check=False
        ).returncode
    text = out.read_text()
    assert code == 0, text
    assert "checkpoint-sidecar demo: summary" in text
    data = json.loads(summary.read_text())
    assert data["failed"] == 0
    assert data["completed"] + data["abandoned"] == data["runs"] == 8
    assert data["resumed_runs"] >= 1
    assert data["sections_restored"] >= 1
    operations = {row["operation"] for row in data["latency"]}
    assert {"lg_put", "lg_put_writes", "lg_get_tuple", "lg_delete_thread"} <= operations
    assert not any(op in operations for op in ("save_section", "lease_acquire"))
