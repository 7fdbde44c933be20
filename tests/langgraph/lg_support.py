"""Helpers of the LangGraph saver tests.

This folder has no ``__init__.py`` and no ``conftest.py`` on purpose: ``langgraph`` is a
namespace package, and a regular package (or a second top-level ``conftest``) named after it
on ``sys.path`` would shadow LangGraph itself. Test modules import their fixtures from here
(``lg_cp_fixture``, ``saver_fixture``: registered as ``lg_cp`` and ``saver``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from sidecar import CheckpointConfig, Checkpointer
from sidecar.langgraph import SidecarSaver
from sidecar.server.embedded import EmbeddedServer


def lg_config(prefix: str = "lgt", **overrides: object) -> CheckpointConfig:
    """Defaults, with a budget that tolerates a loaded shared CI machine."""
    settings: dict[str, object] = {"key_prefix": prefix, "budget_ms": 2000, **overrides}
    return CheckpointConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture(name="lg_cp")
async def lg_cp_fixture(
    private_server: EmbeddedServer, registry: CollectorRegistry
) -> AsyncIterator[Checkpointer]:
    async with Checkpointer.from_url(
        private_server.url, config=lg_config(), registry=registry
    ) as checkpointer:
        yield checkpointer


@pytest.fixture(name="saver")
async def saver_fixture(lg_cp: Checkpointer) -> SidecarSaver:
    return SidecarSaver(lg_cp)


@contextlib.asynccontextmanager
async def monitored(url: str) -> AsyncIterator[list[dict[str, Any]]]:
    """Collect every command the server runs (MONITOR), with ``client_type`` 'lua' for the
    calls scripts make."""
    lines: list[dict[str, Any]] = []
    monitor_client = aioredis.Redis.from_url(url)
    async with monitor_client.monitor() as monitor:

        async def collect() -> None:
            while True:
                lines.append(await monitor.next_command())

        task = asyncio.create_task(collect())
        await asyncio.sleep(0.05)
        yield lines
        await asyncio.sleep(0.1)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await monitor_client.aclose()


def command_name(line: dict[str, Any]) -> str:
    return str(line["command"]).split(" ", 1)[0].upper()
