"""Helpers of the LangGraph saver tests.

This folder has no ``__init__.py`` and no ``conftest.py`` on purpose: ``langgraph`` is a
namespace package, and a regular package (or a second top-level ``conftest``) named after it
on ``sys.path`` would shadow LangGraph itself. Test modules import their fixtures from here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from sidecar import CheckpointConfig, Checkpointer
from sidecar.langgraph import SidecarSaver
from sidecar.server.embedded import EmbeddedServer


def lg_config(prefix: str = "lgt", **overrides: object) -> CheckpointConfig:
    """Defaults, with a budget that tolerates a loaded shared CI machine."""
    return CheckpointConfig(key_prefix=prefix, budget_ms=2000, **overrides)  # type: ignore[arg-type]


@pytest.fixture
async def lg_cp(
    private_server: EmbeddedServer, registry: CollectorRegistry
) -> AsyncIterator[Checkpointer]:
    async with Checkpointer.from_url(
        private_server.url, config=lg_config(), registry=registry
    ) as checkpointer:
        yield checkpointer


@pytest.fixture
async def saver(lg_cp: Checkpointer) -> SidecarSaver:
    return SidecarSaver(lg_cp)
