"""The *Checkpoint overview* dashboard: is checkpointing fast, reliable and worth it?

Rows, top to bottom: **Overview** (the 30-day SLO, the burn rate, "is Redis there at all"),
**Latency** (p99 per operation against the budget), **Outcomes** (what went wrong), **Runs**
(what checkpointing bought, and what expired), **Sidecar** (is anyone watching). A panel that
shows what an alert judges plots the alert's own recording rule with the alert's threshold
drawn (values from :mod:`sidecar.ops.rules`, never retyped) and links to its runbook. The
budget line is the ``checkpoint_budget_seconds`` gauge, not a number typed here.

No operation is named: the manager's verbs and the LangGraph saver's ``lg_*`` calls all appear,
one series per operation at most.
"""

from __future__ import annotations

from typing import Any

from sidecar import names
from sidecar.ops import health
from sidecar.ops import panels as p
from sidecar.ops import rules as r
from sidecar.ops.promql import LATENCY_EVENTS, Queries, le_label

UID = "checkpoint-overview"
FILENAME = "checkpoint-overview"
_COMPRESSED_OPERATION = 'operation="save_section"'


def _by_operation_rate(metric: str, *matchers: str) -> str:
    return f"sum by (operation) (rate({p.sel(metric, *matchers)}[{p.RATE}]))"


def _quantile(q: float, by: str) -> str:
    bucket = p.sel(names.OPERATION_DURATION + "_bucket", LATENCY_EVENTS)
    return f"histogram_quantile({q}, sum by ({by}) (rate({bucket}[{p.RATE}])))"


def _budget_line() -> str:
    return f"max({p.sel(names.BUDGET_SECONDS)})"


def _dashed_red(ref_id: str) -> list[dict[str, Any]]:
    return [
        {
            "matcher": {"id": "byFrameRefID", "options": ref_id},
            "properties": [
                {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
                {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            ],
        }
    ]


def _alert_threshold(value: float) -> list[tuple[float, str]]:
    return [(0, "green"), (value, "red")]


def _overview_row(qs: Queries, slo: float, runbook_url: str) -> list[Any]:
    error_budget = round(1 - slo, 10)
    slo_30d = p.record(r.SLO_RECORD)
    budget_ms = round(qs.budget_seconds * 1000, 6)
    burn = [name for name, *_ in r.BURN_ALERTS]
    fast, slow = r.BURN_ALERTS[0][3], r.BURN_ALERTS[1][3]
    return [
        p.stat(
            f"Within budget, 30 d (SLO {slo * 100:g}%)",
            f"Share of checkpoint operations that reached Redis and finished within the"
            f" {budget_ms:g} ms budget over 30 days; timeouts count as misses, skipped and"
            f" rejected operations are not counted. Green at or above the SLO. Read from the"
            f" recording rule {r.SLO_RECORD} (5-minute records summed over 30 days).",
            p.targets((f"1 - {slo_30d}", "{{job}} {{namespace}}")),
            "percentunit",
            p.size(6, 6),
            thresholds=[(0, "red"), (slo, "green")],
            decimals=3,
            links=p.runbook_links(runbook_url, burn[-1]),
        ),
        p.stat(
            "Error budget remaining, 30 d",
            f"Share of the 30-day error budget ({error_budget * 100:g}% of operations may miss"
            " the budget) not yet spent. Below zero the SLO is broken for the window.",
            p.targets((f"1 - {slo_30d} / {error_budget:g}", "{{job}} {{namespace}}")),
            "percentunit",
            p.size(6, 6),
            thresholds=[(0, "red"), (0.25, "orange"), (0.5, "green")],
            decimals=1,
            links=p.runbook_links(runbook_url, burn[-1]),
        ),
        p.timeseries(
            "Latency burn rate (1 h, 6 h)",
            f"How fast the error budget burns: share over budget ÷ {error_budget:g}. 1 spends"
            f" the 30-day budget in 30 days. The fast page fires above {fast:g} (1 h and 5 min),"
            f" the slow one above {slow:g} (6 h and 30 min): the lines drawn.",
            p.targets(
                (f"{p.record(r.sli_error_record('1h'))} / {error_budget:g}", "1h {{job}}"),
                (f"{p.record(r.sli_error_record('6h'))} / {error_budget:g}", "6h {{job}}"),
            ),
            "short",
            p.size(12, 6),
            thresholds=[(0, "green"), (slow, "orange"), (fast, "red")],
            minimum=0,
            links=p.runbook_links(runbook_url, *burn),
        ),
        p.timeseries(
            "Checkpoint calls getting nothing done",
            f"Share of checkpoint calls over 5 min that failed (error, timeout) or were skipped"
            f" by an open circuit ({r.UNAVAILABLE_RECORD}). Near 100%: Redis is unavailable"
            f" and agents run without checkpoints; the page fires above"
            f" {r.UNAVAILABLE_THRESHOLD:.0%} for 3 min (or when every sidecar loses Redis).",
            p.targets((p.record(r.UNAVAILABLE_RECORD), "{{job}} {{namespace}}")),
            "percentunit",
            p.size(12, 7),
            thresholds=_alert_threshold(r.UNAVAILABLE_THRESHOLD),
            minimum=0,
            maximum=1,
            links=p.runbook_links(runbook_url, "CheckpointRedisUnavailable"),
        ),
        p.state_timeline(
            "Circuit-breaker state",
            "Per process: closed = checkpoints go to Redis; open = after repeated failures"
            " checkpoint calls are skipped without a network call, one cooldown at a time."
            " A sparse agent shows only short red marks during an outage: the panel to its"
            " left is the one that holds.",
            p.targets(
                (
                    f"max by (namespace, pod, instance) (max_over_time("
                    f"{p.sel(names.CIRCUIT_OPEN)}[{p.RATE}]))",
                    "{{pod}} {{instance}}",
                )
            ),
            p.size(12, 7),
            mappings=p.value_map({"0": ("closed", "green"), "1": ("open", "red")}),
            thresholds=[(0, "green"), (1, "red")],
            links=p.runbook_links(runbook_url, "CheckpointCircuitOpen"),
        ),
    ]


def _latency_row(qs: Queries, slo: float, runbook_url: str) -> list[Any]:
    burn = [name for name, *_ in r.BURN_ALERTS]
    heatmap_bucket = p.sel(names.OPERATION_DURATION + "_bucket", LATENCY_EVENTS)
    return [
        p.timeseries(
            "Latency p99 by operation vs budget",
            "The 99th percentile of each operation over the calls that reached Redis (skipped"
            " and rejected calls made none), one line per operation: the manager's verbs and the"
            " LangGraph saver's lg_* calls."
            " The dashed red line is the configured budget, read from"
            " checkpoint_budget_seconds. A line above it burns the SLO.",
            p.targets(
                (_quantile(0.99, "operation, le"), "{{operation}}"), (_budget_line(), "budget")
            ),
            "s",
            p.size(12, 9),
            overrides=_dashed_red("B"),
            links=p.runbook_links(runbook_url, burn[0]),
        ),
        p.timeseries(
            "Latency p50 / p95 / p99, all operations",
            "Quantiles over every operation together, against the budget (dashed red).",
            p.targets(
                (_quantile(0.5, "le"), "p50"),
                (_quantile(0.95, "le"), "p95"),
                (_quantile(0.99, "le"), "p99"),
                (_budget_line(), "budget"),
            ),
            "s",
            p.size(12, 9),
            overrides=_dashed_red("D"),
        ),
        p.timeseries(
            f"Within budget vs SLO {slo * 100:g}% (5 min)",
            f"Share of operations that reached Redis and finished within the budget over"
            f" 5 minutes ({r.sli_error_record('5m')}, the record the fast burn alert reads)."
            f" The line marks the SLO.",
            p.targets((f"1 - {p.record(r.sli_error_record('5m'))}", "{{job}} {{namespace}}")),
            "percentunit",
            p.size(8, 8),
            thresholds=[(0, "red"), (slo, "green")],
            maximum=1,
            links=p.runbook_links(runbook_url, burn[0]),
        ),
        p.timeseries(
            "Budget breaches/s by operation",
            "Operations per second that took longer than the budget, by operation.",
            p.targets((_by_operation_rate(names.BUDGET_EXCEEDED), "{{operation}}")),
            "ops",
            p.size(8, 8),
            draw="bars",
            stacking="normal",
        ),
        p.heatmap(
            "Latency heatmap",
            f"Operations per latency bucket; the {le_label(qs.budget_seconds)} s bucket edge is"
            " the budget. Exemplars (dots linking a slow bucket to its trace) appear only when"
            " an agent process serves its own /metrics in the OpenMetrics format and Prometheus"
            " runs with --enable-feature=exemplar-storage: prometheus_client keeps no exemplars"
            " in multiprocess mode (PROMETHEUS_MULTIPROC_DIR behind the sidecar, the"
            " recommended deployment), so there this heatmap has none; search the traces of"
            " slow checkpoint.* spans instead.",
            p.targets((f"sum by (le) (rate({heatmap_bucket}[{p.RATE}]))", "{{le}}")),
            "s",
            p.size(8, 8),
        ),
    ]


def _outcomes_row(runbook_url: str) -> list[Any]:
    non_ok = p.sel(names.OPERATION_DURATION + "_count", f'outcome!="{names.OK}"')
    return [
        p.timeseries(
            "Operations/s by operation",
            "Checkpoint operations per second, every outcome, one line per operation.",
            p.targets((_by_operation_rate(names.OPERATION_DURATION + "_count"), "{{operation}}")),
            "ops",
            p.size(8, 8),
        ),
        p.timeseries(
            "Non-ok outcomes by operation",
            "error = Redis refused or unreachable; timeout = no answer within the budget;"
            " skipped = circuit open, no call made; rejected = caller mistake or lease conflict;"
            " corrupt = a stored value that did not decode or authenticate.",
            p.targets(
                (
                    f"sum by (operation, outcome) (rate({non_ok}[{p.RATE}]))",
                    "{{operation}} {{outcome}}",
                )
            ),
            "ops",
            p.size(8, 8),
            draw="bars",
            stacking="normal",
        ),
        p.timeseries(
            "Failed share (error + timeout, 5 min)",
            f"Share of the operations that reached Redis which failed ({r.FAILED_RECORD}). The"
            f" warning fires above {r.FAILED_THRESHOLD:.0%} for 10 min, with at least"
            f" {r.FAILED_MIN_OPERATIONS} operations per 5 min.",
            p.targets((p.record(r.FAILED_RECORD), "{{job}} {{namespace}}")),
            "percentunit",
            p.size(8, 8),
            thresholds=_alert_threshold(r.FAILED_THRESHOLD),
            minimum=0,
            links=p.runbook_links(runbook_url, "CheckpointErrorsHigh"),
        ),
    ]


def _runs_row(runbook_url: str) -> list[Any]:
    def per_hour(metric: str) -> str:
        return f"sum(increase({p.sel(metric)}[1h]))"

    size = p.sel(names.SECTION_BYTES + "_bucket")

    def bytes_rate(metric: str) -> str:
        return f"sum(rate({p.sel(metric + '_sum', _COMPRESSED_OPERATION)}[{p.RATE}]))"

    compression = (
        f"{bytes_rate(names.SECTION_BYTES)} / ({bytes_rate(names.SECTION_STORED_BYTES)} > 0)"
    )
    return [
        p.timeseries(
            "Resume rate (resumed ÷ started runs, 30 min)",
            f"Share of the runs started over 30 min that resumed from checkpoints after an"
            f" interruption ({r.RESUMED_RECORD}). High values mean agents fail often: the"
            f" warning fires above {r.RESUMED_THRESHOLD:.0%} (the line), once at least"
            f" {r.RESUMED_MIN_RUNS} runs started in 30 min.",
            p.targets((p.record(r.RESUMED_RECORD), "{{job}} {{namespace}}")),
            "percentunit",
            p.size(8, 8),
            thresholds=_alert_threshold(r.RESUMED_THRESHOLD),
            minimum=0,
            links=p.runbook_links(runbook_url, "CheckpointResumeRateHigh"),
        ),
        p.timeseries(
            "TTL expiries per run started (1 h)",
            f"Runs that expired unfinished per run started over 1 h ({r.TTL_EXPIRED_RECORD});"
            f" no value while no run starts (never +Inf). The warning fires above"
            f" {r.TTL_EXPIRED_THRESHOLD:.0%} (the line), once at least"
            f" {r.TTL_EXPIRED_MIN_RUNS} runs started in the hour.",
            p.targets((p.record(r.TTL_EXPIRED_RECORD), "{{job}} {{namespace}}")),
            "percentunit",
            p.size(8, 8),
            thresholds=_alert_threshold(r.TTL_EXPIRED_THRESHOLD),
            minimum=0,
            links=p.runbook_links(runbook_url, "CheckpointTTLExpiriesHigh"),
        ),
        p.timeseries(
            "TTL and lease expiries, evictions per hour",
            "Runs that expired unfinished (abandoned work), leases that lapsed (an agent died"
            " holding a run), both counted once by the elected expiry watchers, and runs Redis"
            " evicted under maxmemory before their TTL (lost work: memory is short).",
            p.targets(
                (per_hour(names.TTL_EXPIRIES), "TTL expiries / h"),
                (per_hour(names.LEASE_EXPIRIES), "lease expiries / h"),
                (per_hour(names.RUN_EVICTIONS), "evictions / h"),
            ),
            "short",
            p.size(8, 8),
            minimum=0,
            links=p.runbook_links(runbook_url, "CheckpointTTLExpiriesHigh"),
        ),
        p.timeseries(
            "Runs started and finished/s",
            "Runs started (fresh or resumed) and finished (completed, or failed and kept for a"
            " resume).",
            p.targets(
                (
                    f"sum by (mode) (rate({p.sel(names.RUNS_STARTED)}[{p.RATE}]))",
                    "started {{mode}}",
                ),
                (
                    f"sum by (status) (rate({p.sel(names.RUNS_FINISHED)}[{p.RATE}]))",
                    "finished {{status}}",
                ),
            ),
            "ops",
            p.size(8, 8),
        ),
        p.timeseries(
            "Sections restored vs produced (LLM calls saved)",
            "Sections per second a run got from a checkpoint (restored: work not redone) or"
            " produced anew.",
            p.targets((f"sum by (source) (rate({p.sel(names.SECTIONS)}[{p.RATE}]))", "{{source}}")),
            "ops",
            p.size(8, 8),
            draw="bars",
            stacking="normal",
        ),
        p.timeseries(
            "Section size p99 by operation, p50 overall",
            "Serialized size of the sections saved and loaded.",
            p.targets(
                (
                    f"histogram_quantile(0.99, sum by (operation, le) (rate({size}[{p.RATE}])))",
                    "p99 {{operation}}",
                ),
                (f"histogram_quantile(0.5, sum by (le) (rate({size}[{p.RATE}])))", "p50"),
            ),
            "bytes",
            p.size(8, 8),
        ),
        p.timeseries(
            "Compression ratio of saved sections",
            f"Serialized bytes ÷ bytes stored in Redis after compression and encryption"
            f" ({names.SECTION_BYTES} ÷ {names.SECTION_STORED_BYTES}, save_section). 1 = no"
            f" gain; no value until the agents export the stored size.",
            p.targets((compression, "ratio")),
            "short",
            p.size(8, 8),
            minimum=0,
        ),
    ]


def _sidecar_row(runbook_url: str) -> list[Any]:
    to_health = p.dashboard_link(health.UID, "Checkpoint sidecar health")
    up_down = p.value_map({"0": ("down", "red"), "1": ("up", "green")})
    return [
        p.stat(
            "Redis reachable from the sidecars",
            "Lowest sidecar_redis_up of the selected sidecars: 0 when one of them cannot"
            " reach Redis. Every sidecar at 0 and no agent call succeeding is a page.",
            p.targets((f"min({p.sel(names.REDIS_UP)})", "Redis")),
            "none",
            p.size(6, 5),
            thresholds=[(0, "red"), (1, "green")],
            mappings=up_down,
            links=[to_health, *p.runbook_links(runbook_url, "CheckpointRedisUnavailable")],
        ),
        p.stat(
            "Counting expiry watchers",
            "Sidecars elected to count TTL and lease expiries (the sum of"
            f" {names.WATCHER_COUNTING}). At least 1 per Redis; 0 for 10 min warns: nobody"
            " counts expiries.",
            p.targets((f"sum({p.sel(names.WATCHER_COUNTING)})", "counting")),
            "none",
            p.size(6, 5),
            thresholds=[(0, "red"), (1, "green")],
            links=[to_health, *p.runbook_links(runbook_url, "CheckpointExpiriesNotCounted")],
        ),
        p.stat(
            "Expiry watchers healthy",
            f"Sidecars whose watcher is counting, or standing by with Redis answering, ready to"
            f" take over ({names.WATCHER_UP}).",
            p.targets((f"sum({p.sel(names.WATCHER_UP)})", "healthy")),
            "none",
            p.size(6, 5),
            thresholds=[(0, "red"), (1, "green")],
            links=[to_health, *p.runbook_links(runbook_url, "CheckpointExpiryWatcherDown")],
        ),
        p.stat(
            "Sidecar targets up",
            "Scrape targets that exported sidecar metrics in the last hour and answer now;"
            " fewer than known means a sidecar is down (a warning: only observability is"
            " lost).",
            p.targets(
                (
                    f"sum({p.sel('up')} and on (job, instance)"
                    f" last_over_time({p.sel(names.REDIS_UP)}[1h]))",
                    "up",
                ),
                (f"count(last_over_time({p.sel(names.REDIS_UP)}[1h]))", "known"),
            ),
            "none",
            p.size(6, 5),
            thresholds=[(0, "red"), (1, "green")],
            links=[to_health, *p.runbook_links(runbook_url, "CheckpointSidecarDown")],
        ),
    ]


def build(budget_seconds: float, slo: float, runbook_url: str = r.RUNBOOK_URL) -> Any:
    """The overview as a grafanalib ``Dashboard`` for one budget and SLO."""
    qs = Queries(budget_seconds, matchers=p.TARGET_MATCHERS)
    rows = [
        ("Overview", _overview_row(qs, slo, runbook_url)),
        ("Latency", _latency_row(qs, slo, runbook_url)),
        ("Outcomes", _outcomes_row(runbook_url)),
        ("Runs", _runs_row(runbook_url)),
        ("Sidecar", _sidecar_row(runbook_url)),
    ]
    return p.dashboard(
        UID,
        "Checkpoint overview",
        f"Checkpoint latency against the {round(budget_seconds * 1000, 6):g} ms budget, the"
        f" {slo * 100:g}% SLO, failures, and the work checkpoints saved. Generated by"
        " `python -m sidecar.ops`.",
        p.layout(rows),
        names.BUDGET_SECONDS,
    )
