"""The sidecar's registry: its own watcher metrics, process metrics, and the agents' metrics.

The watcher's numbers are plain integers read at scrape time by :class:`WatcherCollector`, not
prometheus_client metric objects. That keeps them in this process's memory whatever
``PROMETHEUS_MULTIPROC_DIR`` says: prometheus_client picks its value class (in-memory or mmap
files) from that variable when it is first imported, and the sidecar must never write its own
numbers into the agents' directory (they would be counted twice). With a multiproc directory,
:class:`~prometheus_client.multiprocess.MultiProcessCollector` adds the agents' checkpoint
metrics, merged across every agent process that writes there.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from sidecar import names
from sidecar.server.reaper import DeadAgentReaper
from sidecar.server.watcher import WatcherState

__all__ = ["WatcherCollector", "build_registry"]

_HELP = {
    names.TTL_EXPIRIES: "Checkpointed runs that expired (TTL) without being resumed or cleaned up.",
    names.LEASE_EXPIRIES: "Run leases that expired: the worker holding the run stopped renewing.",
    names.RUN_EVICTIONS: "Checkpointed runs whose keys maxmemory evicted (lost to memory "
    "pressure).",
    names.WATCHER_UP: "1 when this sidecar's expiry watcher is healthy: counting, or standing by "
    "with Redis answering.",
    names.WATCHER_COUNTING: "1 while this sidecar holds a counting slot, is subscribed and expiry "
    "events are confirmed on. sum() over the fleet: 0 means no expiry is being counted.",
    names.WATCHER_RECONNECTS: "Times the expiry watcher re-subscribed after losing Redis, or was "
    "restarted after an unexpected error.",
    names.REDIS_UP: "1 while the sidecar's Redis connection answers.",
    names.AGENTS_REAPED: "Agent processes found gone whose live gauges were dropped from the "
    "multiprocess directory.",
}


class WatcherCollector(Collector):
    """Exposes a :class:`WatcherState` as counters and gauges at scrape time."""

    def __init__(self, state: WatcherState, reaper: DeadAgentReaper | None = None) -> None:
        self._state = state
        self._reaper = reaper

    def collect(self) -> Iterable[Metric]:
        s = self._state
        yield _counter(names.TTL_EXPIRIES, s.ttl_expiries)
        yield _counter(names.LEASE_EXPIRIES, s.lease_expiries)
        yield _counter(names.RUN_EVICTIONS, s.evictions)
        yield _counter(names.WATCHER_RECONNECTS, s.reconnects)
        yield _gauge(names.WATCHER_UP, 1.0 if s.up else 0.0)
        yield _gauge(names.WATCHER_COUNTING, 1.0 if s.counting and not s.failed else 0.0)
        yield _gauge(names.REDIS_UP, 1.0 if s.redis_up else 0.0)
        if self._reaper is not None:
            yield _counter(names.AGENTS_REAPED, self._reaper.reaped)

    def describe(self) -> Iterable[Metric]:
        # Lets the registry refuse a second collector exposing the same names.
        return list(self.collect())


def _counter(name: str, value: int) -> Metric:
    return CounterMetricFamily(name, _HELP[name], value=value)


def _gauge(name: str, value: float) -> Metric:
    return GaugeMetricFamily(name, _HELP[name], value=value)


def build_registry(
    state: WatcherState,
    *,
    multiproc_dir: str | Path | None = None,
    registry: CollectorRegistry | None = None,
    reaper: DeadAgentReaper | None = None,
) -> CollectorRegistry:
    """The registry ``/metrics`` serves.

    A new registry gets the process, platform and GC collectors; a registry passed in (an
    application embedding the sidecar) only gets the watcher and multiprocess collectors added.
    """
    if registry is None:
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    registry.register(WatcherCollector(state, reaper))
    if multiproc_dir is not None:
        path = Path(multiproc_dir)
        path.mkdir(parents=True, exist_ok=True)
        MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
    return registry
