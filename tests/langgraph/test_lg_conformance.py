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

from sidecar import Checkpointer, SyncCheckpointer
from sidecar.langgraph import SidecarSaver
from sidecar.server.embedded import EmbeddedServer

CAPABILITIES = {
    "put": 17, "put_writes": 10, "get_tuple": 10, "list": 16,
    "delete_thread": 5, "delete_for_runs": 7, "copy_thread": 8, "prune": 8,
}  # fmt: skip
_prefixes = itertools.count()


async def run_suite(url: str, name: str, *, threads: bool = False) -> CapabilityReport:
    """``threads``: the saver on a SyncCheckpointer (its async methods run in worker threads)."""
    registry = CollectorRegistry()
    opened: list[Checkpointer | SyncCheckpointer] = []

    async def factory() -> AsyncIterator[SidecarSaver]:
        config = lg_config(f"conf{next(_prefixes)}")
        if threads:
            sync_cp = SyncCheckpointer.from_url(url, config=config, registry=registry)
            opened.append(sync_cp)
            try:
                yield SidecarSaver(sync_cp)
            finally:
                sync_cp.close()
            return
        cp = Checkpointer.from_url(url, config=config, registry=registry)
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


async def test_conformance_sync_checkpointer(private_server: EmbeddedServer) -> None:
    """The saver's sync shell (a SyncCheckpointer) passes the same suite."""
    report = await run_suite(private_server.url, "SidecarSaver-sync", threads=True)
    assert_every_capability(report)


@pytest.mark.timeout(240)
async def test_conformance_cluster(redis_cluster: LocalCluster) -> None:
    redis_cluster.flushall()
    assert_every_capability(await run_suite(redis_cluster.url, "SidecarSaver-cluster"))
