"""``demo --node``: some of the demo's reporting agents written in JavaScript, checkpointing
through the sidecar's HTTP API (``clients/node``), beside the Python ones.

The API is served in process on a free port over the demo's Redis, registry and tracer, so its
runs appear in the same metrics and summary. Needs ``node`` on PATH and the repository's
``clients/node`` (it is not part of the Python package).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry

from sidecar.api import ApiServer
from sidecar.config import CheckpointConfig

SCRIPT = Path(__file__).with_name("node_agents.mjs")
CLIENT = Path(__file__).resolve().parents[2] / "clients" / "node" / "src" / "index.js"


def unavailable() -> str | None:
    """Why ``--node`` cannot run here, or None when it can."""
    if shutil.which("node") is None:
        return "node is not on PATH"
    if not CLIENT.is_file():
        return f"the Node client is not here ({CLIENT}): run the demo from the repository"
    return None


async def run_node_agents(
    config: CheckpointConfig,
    runs: int,
    session: str,
    *,
    registry: CollectorRegistry,
    tracer_provider: TracerProvider,
) -> dict[str, Any]:
    """Serve the API, run ``runs`` Node agents through it, return their totals."""
    node = shutil.which("node")
    assert node is not None
    async with ApiServer(config, port=0, registry=registry, tracer_provider=tracer_provider) as api:
        proc = await asyncio.create_subprocess_exec(
            node, str(SCRIPT), CLIENT.as_uri(), api.url, str(runs), session,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"node agents exited with {proc.returncode}: {err.decode()[-500:]}")
    totals: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    totals["api_url"] = api.url
    return totals
