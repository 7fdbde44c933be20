"""The Node client's own tests (``node --test clients/node``) and the Node report agent, run
against a real sidecar process over a private Valkey: part of ``make test``.

Without ``node`` on PATH these are skipped locally and fail under ``CI=true`` (as for the other
test tools); the assertions below read Node's own summary, so a skipped or missing Node test
counts as a failure here, never as a pass.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from server.helpers import ROOT, SidecarProcess, clean_env, serve_args

from sidecar.server.embedded import EmbeddedServer

from .test_serve import api_url

NODE = shutil.which("node")
CLIENT = ROOT / "clients" / "node"
Factory = Callable[..., SidecarProcess]

if NODE is None and os.environ.get("CI") != "true":
    pytest.skip("node is not installed (Debian: apt-get install nodejs)", allow_module_level=True)


def _sidecar(private_server: EmbeddedServer, sidecar_factory: Factory) -> str:
    env = clean_env(SIDECAR_BUDGET_MS="1000")  # a loaded CI machine must not fail a test
    sc = sidecar_factory(*serve_args(private_server.url, "node"), env=env).wait_serving()
    return api_url(sc)


def _node(args: list[str], url: str, tmp_path: Path, timeout: float = 120) -> tuple[int, str]:
    assert NODE is not None, "node is required under CI=true"
    out = tmp_path / "node.out"
    env = {**clean_env(), "CHECKPOINT_SIDECAR_URL": url}
    with out.open("wb") as sink:
        code = subprocess.run(
            [NODE, *args], stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=ROOT, timeout=timeout, check=False,
        ).returncode  # fmt: skip
    return code, out.read_text()


def test_node_client_suite(
    private_server: EmbeddedServer, sidecar_factory: Factory, tmp_path: Path
) -> None:
    url = _sidecar(private_server, sidecar_factory)
    code, out = _node(["--test", str(CLIENT)], url, tmp_path)
    summary = {
        k: int(v)
        for k, v in re.findall(r"^# (tests|pass|fail|cancelled|skipped|todo) (\d+)$", out, re.M)
    }
    declared = sum(
        len(re.findall(r"^test\(", f.read_text(), re.M))
        for f in (CLIENT / "test").glob("*.test.js")
    )
    assert code == 0, out[-4000:]
    assert declared >= 9
    assert summary == {"tests": declared, "pass": declared, "fail": 0, "cancelled": 0,
                       "skipped": 0, "todo": 0}, out[-4000:]  # fmt: skip


def test_node_report_agent_crashes_and_resumes(
    private_server: EmbeddedServer, sidecar_factory: Factory, tmp_path: Path
) -> None:
    url = _sidecar(private_server, sidecar_factory)
    code, out = _node(["examples/node_report_agent.mjs", "user-42", "report-1"], url, tmp_path)
    assert code == 0, out
    assert "attempt 1 failed: worker crashed after 2 sections" in out
    assert "Resumed from 2 checkpoints..." in out
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {
        "success": True, "checkpoints_used": True, "resumed_sections": 2,
        "sections": ["summary", "data_analysis", "recommendations", "action_items"],
    }  # fmt: skip
