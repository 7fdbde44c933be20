"""``checkpoint-sidecar demo --node``: Node agents through the HTTP API beside the Python ones,
both kinds in one summary (and in the same metrics)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from server.helpers import ROOT, clean_env

if shutil.which("node") is None and os.environ.get("CI") != "true":
    pytest.skip("node is not installed", allow_module_level=True)


@pytest.mark.timeout(180)
def test_demo_with_node_agents(tmp_path: Path) -> None:
    summary, out = tmp_path / "summary.json", tmp_path / "demo.out"
    with out.open("wb") as sink:
        code = subprocess.run(
            [sys.executable, "-m", "sidecar", "demo", "--runs", "12", "--metrics-port", "0",
             "--plain", "--node", "--json", str(summary)],
            stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=clean_env(), cwd=ROOT, timeout=170, check=False,
        ).returncode  # fmt: skip
    text = out.read_text()
    assert code == 0, text[-3000:]
    data = json.loads(summary.read_text())
    node = data["node"]
    assert node["runs"] == 4 and node["completed"] == 4 and node["failed"] == 0
    assert node["crashes"] == 4 and node["resumed"] == 4
    assert node["restored"] == 1 + 2 + 3 + 1  # run i crashed after 1 + i % 3 sections
    assert node["produced"] == 4 * 4  # every section produced once, before or after the crash
    assert "Node agents through the HTTP API" in text
    # the API's runs are counted with the Python agents' on the demo's registry
    assert data["sections_restored"] >= node["restored"]
    assert data["completed"] == 12 - data["abandoned"] - data["failed"]
