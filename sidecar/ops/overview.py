"""The *Checkpoint overview* dashboard: is checkpointing fast, reliable and worth it?

Read top to bottom: the SLO and its error budget; traffic and latency against the budget (the
budget line is the ``checkpoint_budget_seconds`` gauge, not a number typed here); what went
wrong; and what checkpointing bought (resumes, sections restored instead of recomputed).
"""

from __future__ import annotations

from typing import Any

from sidecar import names
from sidecar.ops import panels as p
from sidecar.ops.promql import Queries, le_label

UID = "checkpoint-overview"
FILENAME = "checkpoint-overview"
_NON_OK = (names.ERROR, names.TIMEOUT, names.SKIPPED, names.REJECTED)


def _by_operation_rate(metric: str, *matchers: str) -> str:
    return f"sum by (operation) (rate({p.sel(metric, *matchers)}[{p.RATE}]))"


def _quantile(q: float) -> str:
    bucket = p.sel(names.OPERATION_DURATION + "_bucket")
    return f"histogram_quantile({q}, sum by (operation, le) (rate({bucket}[{p.RATE}])))"


def _slo_panels(qs: Queries, slo: float) -> list[Any]:
    error_budget = round(1 - slo, 10)
    within_30d = qs.sli_good_ratio("30d")
    remaining = f"1 - ({qs.sli_error_ratio('30d')}) / {error_budget:g}"
    budget_ms = round(qs.budget_seconds * 1000, 6)
    return [
        p.stat(
            f"Within budget, 30 d (SLO {slo * 100:g}%)",
            f"Share of checkpoint operations that reached Redis and finished within the"
            f" {budget_ms:g} ms budget over 30 days; timeouts count as misses, skipped and"
            f" rejected operations are not counted. Green at or above the SLO.",
            p.targets((within_30d, "{{job}}")),
            "percentunit",
            p.grid(0, 0, 6, 5),
            thresholds=[(0, "red"), (slo, "green")],
            decimals=3,
        ),
        p.stat(
            "Error budget remaining, 30 d",
            f"Share of the 30-day error budget ({error_budget * 100:g}% of operations may miss"
            " the budget) not yet spent. Below zero the SLO is broken for the window.",
            p.targets((remaining, "{{job}}")),
            "percentunit",
            p.grid(6, 0, 6, 5),
            thresholds=[(0, "red"), (0.25, "orange"), (0.5, "green")],
            decimals=1,
        ),
        p.state_timeline(
            "Circuit-breaker state",
            "Per process: closed = checkpoints go to Redis; open = after repeated failures"
            " checkpoint calls are skipped without a network call until a probe succeeds.",
            p.targets((f"max by (instance) ({p.sel(names.CIRCUIT_OPEN)})", "{{instance}}")),
            p.grid(12, 0, 12, 5),
            mappings=p.value_map({"0": ("closed", "green"), "1": ("open", "red")}),
            thresholds=[(0, "green"), (1, "red")],
        ),
    ]


def _latency_panels(qs: Queries, slo: float) -> list[Any]:
    budget_line = f"max({p.sel(names.BUDGET_SECONDS)})"
    dashed_red = [
        {
            "matcher": {"id": "byFrameRefID", "options": "D"},
            "properties": [
                {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
                {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            ],
        }
    ]
    return [
        p.timeseries(
            "Operations/s by operation",
            "Checkpoint operations per second, every outcome, by verb.",
            p.targets((_by_operation_rate(names.OPERATION_DURATION + "_count"), "{{operation}}")),
            "ops",
            p.grid(0, 5, 12, 8),
        ),
        p.timeseries(
            "Latency p50 / p95 / p99 by operation",
            "Latency quantiles per verb from the duration histogram. The dashed red line is the"
            " configured budget, read from checkpoint_budget_seconds.",
            p.targets(
                (_quantile(0.5), "p50 {{operation}}"),
                (_quantile(0.95), "p95 {{operation}}"),
                (_quantile(0.99), "p99 {{operation}}"),
                (budget_line, "budget"),
            ),
            "s",
            p.grid(12, 5, 12, 8),
            overrides=dashed_red,
        ),
        p.timeseries(
            "Budget breaches/s",
            "Operations per second that took longer than the budget, by verb.",
            p.targets((_by_operation_rate(names.BUDGET_EXCEEDED), "{{operation}}")),
            "ops",
            p.grid(0, 13, 12, 8),
            draw="bars",
            stacking="normal",
        ),
        p.timeseries(
            f"Share within budget vs SLO {slo * 100:g}%",
            "Share of operations that reached Redis and finished within the budget, per job,"
            " over the rate window. The line marks the SLO.",
            p.targets((qs.sli_good_ratio(p.RATE), "{{job}}")),
            "percentunit",
            p.grid(12, 13, 12, 8),
            thresholds=[(0, "red"), (slo, "green")],
            maximum=1,
        ),
        p.timeseries(
            "Outcomes by operation (non-ok)",
            "error = Redis refused or unreachable; timeout = no answer within the budget;"
            " skipped = circuit open, no call made; rejected = caller mistake or lease conflict.",
            p.targets(
                (
                    "sum by (operation, outcome) (rate("
                    + p.sel(names.OPERATION_DURATION + "_count", f'outcome=~"{"|".join(_NON_OK)}"')
                    + f"[{p.RATE}]))",
                    "{{operation}} {{outcome}}",
                )
            ),
            "ops",
            p.grid(0, 21, 12, 8),
            draw="bars",
            stacking="normal",
        ),
        p.heatmap(
            "Latency heatmap (exemplars link to traces)",
            f"Operations per latency bucket; the {le_label(qs.budget_seconds)} s bucket edge is"
            " the budget. Exemplar dots carry the trace id of a real slow operation.",
            p.targets(
                (
                    "sum by (le) (rate("
                    + p.sel(names.OPERATION_DURATION + "_bucket")
                    + f"[{p.RATE}]))",
                    "{{le}}",
                )
            ),
            "s",
            p.grid(12, 21, 12, 8),
        ),
    ]


def _value_panels(qs: Queries) -> list[Any]:
    def per_hour(metric: str) -> str:
        return f"sum(increase({p.sel(metric)}[1h]))"

    size = p.sel(names.SECTION_BYTES + "_bucket")
    return [
        p.timeseries(
            "Resume rate (resumed ÷ started runs)",
            "Share of runs that resumed from checkpoints after an interruption. High values"
            " mean agents fail often (alert above 25% over 30 min).",
            p.targets((qs.resumed_ratio(p.RATE), "{{job}}")),
            "percentunit",
            p.grid(0, 29, 8, 8),
            minimum=0,
        ),
        p.timeseries(
            "Sections restored vs produced (LLM calls saved)",
            "Sections per second a run got from a checkpoint (restored: work not redone) or"
            " produced anew.",
            p.targets((f"sum by (source) (rate({p.sel(names.SECTIONS)}[{p.RATE}]))", "{{source}}")),
            "ops",
            p.grid(8, 29, 8, 8),
            draw="bars",
            stacking="normal",
        ),
        p.timeseries(
            "TTL and lease expiries per hour",
            "Runs that expired unfinished (abandoned work) and leases that lapsed (an agent died"
            " holding a run), counted by the sidecar's expiry watcher.",
            p.targets(
                (per_hour(names.TTL_EXPIRIES), "TTL expiries / h"),
                (per_hour(names.LEASE_EXPIRIES), "lease expiries / h"),
            ),
            "short",
            p.grid(16, 29, 8, 8),
            minimum=0,
        ),
        p.timeseries(
            "Section size p50 / p99",
            "Serialized size of sections saved and loaded, by verb.",
            p.targets(
                (
                    f"histogram_quantile(0.5, sum by (operation, le) (rate({size}[{p.RATE}])))",
                    "p50 {{operation}}",
                ),
                (
                    f"histogram_quantile(0.99, sum by (operation, le) (rate({size}[{p.RATE}])))",
                    "p99 {{operation}}",
                ),
            ),
            "bytes",
            p.grid(0, 37, 12, 8),
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
            p.grid(12, 37, 12, 8),
        ),
    ]


def build(budget_seconds: float, slo: float) -> Any:
    """The overview as a grafanalib ``Dashboard`` for one budget and SLO."""
    qs = Queries(budget_seconds, matchers=p.TARGET_MATCHERS)
    return p.dashboard(
        UID,
        "Checkpoint overview",
        f"Checkpoint latency against the {round(budget_seconds * 1000, 6):g} ms budget, the"
        f" {slo * 100:g}% SLO, failures, and the work checkpoints saved. Generated by"
        " `python -m sidecar.ops`.",
        ["checkpoint-sidecar"],
        [*_slo_panels(qs, slo), *_latency_panels(qs, slo), *_value_panels(qs)],
        names.BUDGET_SECONDS,
    )
