"""The *Checkpoint sidecar health* dashboard: is the sidecar itself alive and watching?

The ``namespace`` / ``pod`` / ``instance`` variables list the targets that export the sidecar's
own metrics, so the process panels show the sidecars, not the agents scraped under the same
job. Two rows: **Sidecar** (Redis, the expiry watchers, scrapes) and **Process** (CPU,
memory, file descriptors). Panels that show what an alert judges link to its runbook.
"""

from __future__ import annotations

from typing import Any

from sidecar import names
from sidecar.ops import panels as p
from sidecar.ops.rules import RUNBOOK_URL

UID = "checkpoint-sidecar-health"
FILENAME = "checkpoint-sidecar-health"
OVERVIEW_UID = "checkpoint-overview"
_UP_DOWN = p.value_map({"0": ("down", "red"), "1": ("up", "green")})
_RED_GREEN = [(0, "red"), (1, "green")]
_PER_TARGET = "{{pod}} {{instance}}"


def _per_target(metric: str, how: str = "min") -> str:
    return f"{how} by (namespace, pod, instance) ({p.sel(metric)})"


def _sidecar_row(runbook_url: str) -> list[Any]:
    to_overview = p.dashboard_link(OVERVIEW_UID, "Checkpoint overview")
    return [
        p.stat(
            "Redis up",
            "1 when the sidecar's last health check (PING) of Redis succeeded. The sidecar"
            " keeps serving while Redis is down; every sidecar at 0 with no agent call"
            " succeeding pages (CheckpointRedisUnavailable).",
            p.targets((_per_target(names.REDIS_UP), _PER_TARGET)),
            "none",
            p.size(6, 5),
            thresholds=_RED_GREEN,
            mappings=_UP_DOWN,
            links=[to_overview, *p.runbook_links(runbook_url, "CheckpointRedisUnavailable")],
        ),
        p.stat(
            "Expiry watcher up",
            "1 while the watcher is healthy: counting (subscribed to keyspace notifications), or"
            " standing by with Redis answering, ready to take over.",
            p.targets((_per_target(names.WATCHER_UP), _PER_TARGET)),
            "none",
            p.size(6, 5),
            thresholds=_RED_GREEN,
            mappings=_UP_DOWN,
            links=p.runbook_links(runbook_url, "CheckpointExpiryWatcherDown"),
        ),
        p.stat(
            "Counting expiry watchers",
            "How many sidecars are elected to count expiries (several sidecars share one"
            " Redis; K ≥ 1 of them count, deduplicated in Redis). 0 for 10 min warns.",
            p.targets((f"sum({p.sel(names.WATCHER_COUNTING)})", "counting")),
            "none",
            p.size(6, 5),
            thresholds=_RED_GREEN,
            links=p.runbook_links(runbook_url, "CheckpointExpiriesNotCounted"),
        ),
        p.stat(
            "Scrape up",
            "Prometheus' own `up` for the sidecar targets: 0 means the last scrape failed.",
            p.targets((_per_target("up"), _PER_TARGET)),
            "none",
            p.size(6, 5),
            thresholds=_RED_GREEN,
            mappings=_UP_DOWN,
            links=p.runbook_links(runbook_url, "CheckpointSidecarDown"),
        ),
        p.state_timeline(
            "Counting role per sidecar",
            "Which sidecar counts expiries over time: a hand-over shows as the role moving"
            " from one sidecar to another.",
            p.targets((_per_target(names.WATCHER_COUNTING, "max"), _PER_TARGET)),
            p.size(12, 6),
            mappings=p.value_map({"0": ("standby", "blue"), "1": ("counting", "green")}),
            thresholds=[(0, "blue"), (1, "green")],
        ),
        p.timeseries(
            "Expiry watcher reconnects",
            "Times the watcher lost its subscription and reconnected, per 5 minutes.",
            p.targets(
                (
                    f"sum by (namespace, pod, instance)"
                    f" (increase({p.sel(names.WATCHER_RECONNECTS)}[5m]))",
                    _PER_TARGET,
                )
            ),
            "short",
            p.size(12, 6),
            draw="bars",
            minimum=0,
        ),
    ]


def _process_row() -> list[Any]:
    return [
        p.timeseries(
            "Process CPU",
            "CPU time used by the sidecar process, as a share of one core.",
            p.targets((f"rate({p.sel('process_cpu_seconds_total')}[{p.RATE}])", _PER_TARGET)),
            "percentunit",
            p.size(8, 8),
            minimum=0,
        ),
        p.timeseries(
            "Process memory (resident)",
            "Resident memory of the sidecar process.",
            p.targets((p.sel("process_resident_memory_bytes"), _PER_TARGET)),
            "bytes",
            p.size(8, 8),
            minimum=0,
        ),
        p.timeseries(
            "Open file descriptors",
            "Open file descriptors (sockets to Redis and to scrapers included) against the limit.",
            p.targets(
                (p.sel("process_open_fds"), "open " + _PER_TARGET),
                (p.sel("process_max_fds"), "limit " + _PER_TARGET),
            ),
            "short",
            p.size(8, 8),
            minimum=0,
        ),
    ]


def build(runbook_url: str = RUNBOOK_URL) -> Any:
    """The health dashboard as a grafanalib ``Dashboard`` (it does not depend on the budget)."""
    return p.dashboard(
        UID,
        "Checkpoint sidecar health",
        "Health of the checkpoint sidecar process: Redis, the expiry watchers, scrapes, CPU,"
        " memory and file descriptors. Generated by `python -m sidecar.ops`.",
        p.layout([("Sidecar", _sidecar_row(runbook_url)), ("Process", _process_row())]),
        names.REDIS_UP,
    )
