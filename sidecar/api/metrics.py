"""Where the API's checkpoint metrics go: the registry the sidecar's ``/metrics`` serves.

Without a multiprocess directory the API's Checkpointer registers its metrics in that registry
directly. With one, ``/metrics`` already serves the agents' ``checkpoint_*`` metrics merged
from their files, and a second family of the same name would be a duplicate Prometheus refuses:
the API's metrics then live in a registry of their own, and one collector serves both sums
(API runs counted like library runs, one family per name).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample


class MergedCollector(Collector):
    """Families of several collectors, samples with the same name and labels summed
    (gauges: the maximum, like ``checkpoint_circuit_open``'s livemax)."""

    def __init__(self, *sources: Collector) -> None:
        self._sources = sources

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]] = {}
        for source in self._sources:
            for family in source.collect():
                found = merged.get(family.name)
                if found is None:
                    found = merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                    values[family.name] = {}
                into = values[family.name]
                for s in family.samples:
                    key = (s.name, tuple(sorted(s.labels.items())))
                    old = into.get(key)
                    if old is None:
                        into[key] = s
                    elif family.type == "gauge":
                        into[key] = old._replace(value=max(old.value, s.value))
                    else:
                        into[key] = old._replace(value=old.value + s.value)
        for name, family in merged.items():
            family.samples = list(values[name].values())
            yield family


def in_memory_values() -> None:
    """Make metric objects created from now on in this process keep their values in memory.

    prometheus_client picks its value class when first imported: file-backed (mmap) when
    ``PROMETHEUS_MULTIPROC_DIR`` was set then, as it is in a sidecar aggregating agents. The
    sidecar takes the variable out of its environment and must never write files into the
    agents' directory (its numbers would be counted twice), so the API's Checkpointer, the
    only maker of metric objects in the sidecar process, gets in-memory values.
    """
    if values.ValueClass is not values.MutexValue:
        values.ValueClass = values.MutexValue


def api_registry(served: CollectorRegistry) -> CollectorRegistry:
    """The registry the API's Checkpointer should use so that ``served`` exposes its metrics
    once (merged with the agents' when ``served`` holds a multiprocess collector)."""
    in_memory_values()
    collectors = list(getattr(served, "_collector_to_names", {}))
    multiproc = [c for c in collectors if isinstance(c, MultiProcessCollector)]
    if not multiproc:
        return served
    own = CollectorRegistry()
    for collector in multiproc:
        served.unregister(collector)
    served.register(MergedCollector(*multiproc, own))
    return own
