"""Fixtures of the cluster-only tests: a cluster client on the session cluster, emptied."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from cluster_support import LocalCluster, WholeClusterClient

from sidecar.store import close_client


@pytest.fixture
async def cluster_client(redis_cluster: LocalCluster) -> AsyncIterator[WholeClusterClient]:
    """A cluster client on the session cluster, every primary flushed."""
    redis_cluster.flushall()
    client = WholeClusterClient.from_url(redis_cluster.startup_url, socket_timeout=None)
    yield client
    await close_client(client)
