"""LangGraph's own conformance suite against SidecarSaver, on a private Valkey and on the
3+3 test cluster: all eight capabilities detected, every check passed.

The suite builds one saver per capability and never cleans up between its checks (its helper
threads are named ``thread-0`` ...): each saver gets a key prefix of its own.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest
from cluster_support import LocalCluster
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.report import CapabilityReport
from lg_support import lg_config
from prometheus_client import CollectorRegistry

from sidecar import Checkpointer
from sidecar.langgraph import SidecarSaver
from sidecar.server.embedded import EmbeddedServer

CAPABILITIES = {
    "put": 17, "put_writes": 10, "get_tuple": 10, "list": 16,
    "delete_thread": 5, "delete_for_runs": 7, "copy_thread": 8, "prune": 8,
}  # fmt: skip
_prefixes = itertools.count()


async def run_suite(url: str, name: str) -> CapabilityReport:
    registry = CollectorRegistry()
    opened: list[Checkpointer] = []

    async def factory() -> AsyncIterator[SidecarSaver]:
        cp = Checkpointer.from_url(
            url, config=lg_config(f"conf{next(_prefixes)}"), registry=registry
        )
        opened.append(cp)
        try:
            yield SidecarSaver(cp)
        finally:
            await cp.aclose()

    registered = checkpointer_test(name=name)(factory)
    report = await validate(registered)
    print(f"\nconformance report ({name}):")
    report.print_report()
    assert len(opened) == len(CAPABILITIES)  # one fresh saver per capability
    return report


def assert_every_capability(report: CapabilityReport) -> None:
    for capability, checks in CAPABILITIES.items():
        result = report.results[capability]
        assert result.detected, f"{capability} not detected"
        assert result.failures == [], f"{capability}: {result.failures}"
        assert result.passed is True, capability
        assert (result.tests_passed, result.tests_failed) == (checks, 0), capability


async def test_conformance_private_valkey(private_server: EmbeddedServer) -> None:
    assert_every_capability(await run_suite(private_server.url, "SidecarSaver-valkey"))


@pytest.mark.timeout(240)
async def test_conformance_cluster(redis_cluster: LocalCluster) -> None:
    redis_cluster.flushall()
    assert_every_capability(await run_suite(redis_cluster.url, "SidecarSaver-cluster"))
