"""Every name an operator sees: metric names, label values, span names, bucket edges.

Dashboards and alert rules are generated from this module, so a metric renamed here is renamed
everywhere; nothing downstream retypes a metric name or a label value. Label values are small
closed sets: never a user id, a run id or a section name (cardinality and privacy).
"""

from __future__ import annotations

from typing import Final

# --- metric names (as exposed; counters carry the ``_total`` suffix) -------------------------
OPERATION_DURATION: Final = "checkpoint_operation_duration_seconds"
BUDGET_EXCEEDED: Final = "checkpoint_budget_exceeded_total"
BUDGET_SECONDS: Final = "checkpoint_budget_seconds"
SECTION_BYTES: Final = "checkpoint_section_bytes"  # serialized (logical) size
SECTION_STORED_BYTES: Final = "checkpoint_section_stored_bytes"  # as stored: sealed, compressed
RUNS_STARTED: Final = "checkpoint_runs_started_total"
RUNS_FINISHED: Final = "checkpoint_runs_finished_total"
SECTIONS: Final = "checkpoint_sections_total"
CIRCUIT_OPEN: Final = "checkpoint_circuit_open"
# Written by the sidecar's expiry watcher.
TTL_EXPIRIES: Final = "checkpoint_ttl_expiries_total"
LEASE_EXPIRIES: Final = "checkpoint_lease_expiries_total"
RUN_EVICTIONS: Final = "checkpoint_run_evictions_total"
WATCHER_UP: Final = "sidecar_expiry_watcher_up"
WATCHER_COUNTING: Final = "sidecar_expiry_watcher_counting"
WATCHER_RECONNECTS: Final = "sidecar_expiry_watcher_reconnects_total"
REDIS_UP: Final = "sidecar_redis_up"
AGENTS_REAPED: Final = "sidecar_dead_agent_processes_total"

# --- label values -------------------------------------------------------------------------
# operation: the seven verbs of the seed's manager, plus the lease and progress bookkeeping.
OPERATIONS: Final = (
    "save_section",
    "load_section",
    "load_all_sections",
    "get_progress",
    "has_checkpoints",
    "get_checkpoint_age",
    "cleanup",
    "lease_acquire",
    "lease_renew",
    "lease_release",
    "mark_in_progress",
    "resume_view",
)
# operation: the LangGraph saver's methods (sidecar.langgraph), one label value each.
LANGGRAPH_OPERATIONS: Final = (
    "lg_put",
    "lg_put_writes",
    "lg_get_tuple",
    "lg_list",
    "lg_delete_thread",
    "lg_delete_for_runs",
    "lg_copy_thread",
    "lg_prune",
)
# every operation label value the library records.
ALL_OPERATIONS: Final = OPERATIONS + LANGGRAPH_OPERATIONS
# outcome of one operation.
OK: Final = "ok"  # Redis answered within the budget
ERROR: Final = "error"  # Redis unreachable or refused the command
TIMEOUT: Final = "timeout"  # no answer within the budget: the call gave up
SKIPPED: Final = "skipped"  # the circuit breaker is open: no network call was made
REJECTED: Final = "rejected"  # caller mistake or lease conflict: nothing was written
CORRUPT: Final = "corrupt"  # a stored value that does not decode or authenticate: not returned
UNREPLICATED: Final = "unreplicated"  # saved on the primary; min_replicas / min_local_fsync not
# acknowledged within the budget, so not confirmed
OUTCOMES: Final = (OK, ERROR, TIMEOUT, SKIPPED, REJECTED, CORRUPT, UNREPLICATED)
# operations whose payload size is observed in checkpoint_section_bytes.
SIZED_OPERATIONS: Final = ("save_section", "load_section", "load_all_sections")
RUN_MODES: Final = ("fresh", "resumed")
RUN_STATUSES: Final = ("completed", "failed")
# restored from a checkpoint, produced anew, or discarded: stored but undecodable (produced again)
SECTION_SOURCES: Final = ("restored", "produced", "discarded")

# --- spans --------------------------------------------------------------------------------
SPAN_PREFIX: Final = "checkpoint."
TRACER_NAME: Final = "sidecar"

# --- buckets ------------------------------------------------------------------------------
_BASE_LATENCY_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
SECTION_BYTES_BUCKETS: Final = tuple(float(2**p) for p in range(6, 25, 2))  # 64 B .. 16 MiB


def latency_buckets(budget_seconds: float) -> tuple[float, ...]:
    """Latency bucket edges from 0.1 ms to 2.5 s that contain the budget exactly as an edge.

    With the budget on an edge, ``le="<budget>"`` counts exactly the operations within budget:
    the SLO ratio needs no interpolation.
    """
    if budget_seconds <= 0:
        raise ValueError("budget must be positive")
    edges = set(_BASE_LATENCY_BUCKETS)
    edges.add(round(budget_seconds, 9))
    return tuple(sorted(edges))
