"""Prometheus recording and alerting rules for the checkpoint latency SLO, as data.

Each alert is a list of :class:`Term` s: a *probe* (the PromQL whose value the alert looks at)
and the comparison that makes it fire. The YAML is assembled from them, and the end-to-end test
evaluates every probe against a real Prometheus, so an alert naming a metric that does not
exist is caught before an operator finds out that it can never fire.

Recording rules follow Sloth's naming (``<prefix>:sli_error:ratio_rate<window>``).
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Any

from sidecar import names
from sidecar.config import CheckpointConfig
from sidecar.ops.promql import Queries

DEFAULT_BUDGET_MS = CheckpointConfig.model_fields["budget_ms"].default
DEFAULT_SLO = 0.99
# Where the runbooks live. The default is the file's path in this repository; operators who host
# the repository (or a copy of the runbooks) pass their URL: --runbook-url https://.../runbooks.md
RUNBOOK_URL = "docs/runbooks.md"
SLI_WINDOWS = ("5m", "30m", "1h", "6h", "3d")
SIDECAR_METRIC_PREFIX = names.REDIS_UP.split("_", 1)[0] + "_"  # "sidecar_"


def sli_error_record(window: str) -> str:
    return f"checkpoint:sli_error:ratio_rate{window}"


FAILED_RECORD = "checkpoint:operations_failed:ratio_rate5m"
RESUMED_RECORD = "checkpoint:runs_resumed:ratio_rate30m"
TTL_EXPIRED_RECORD = "checkpoint:runs_ttl_expired:ratio_rate1h"


@dataclass(frozen=True)
class Term:
    """One condition of an alert: ``probe`` returns the value, ``comparison`` filters it.

    ``absent`` terms fire when ``probe`` returns nothing (``absent(probe)``)."""

    probe: str
    comparison: str = ""
    absent: bool = False

    def render(self) -> str:
        if self.absent:
            return f"absent({self.probe})"
        return f"{self.probe} {self.comparison}".strip()


@dataclass(frozen=True)
class Alert:
    name: str
    terms: tuple[Term, ...]
    severity: str
    for_: str
    summary: str
    description: str
    joiner: str = "and"

    def expr(self) -> str:
        rendered = [t.render() for t in self.terms]
        if len(rendered) == 1:
            return rendered[0]
        return f" {self.joiner} ".join(f"({r})" for r in rendered)

    def rule(self, runbook_url: str = RUNBOOK_URL) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr(),
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook_url": f"{runbook_url}#{self.name.lower()}",
            },
        }


def _fmt(value: float) -> str:
    """A float as PromQL reads it, without binary noise (``0.01`` not ``0.010000000000000009``)."""
    return format(round(value, 10), "g")


def recording_rules(budget_seconds: float) -> list[tuple[str, str]]:
    """(record name, expression) pairs."""
    q = Queries(budget_seconds)
    rules = [(sli_error_record(w), q.sli_error_ratio(w)) for w in SLI_WINDOWS]
    rules += [
        (FAILED_RECORD, q.failed_ratio("5m")),
        (RESUMED_RECORD, q.resumed_ratio("30m")),
        (TTL_EXPIRED_RECORD, q.ttl_expiry_ratio("1h")),
    ]
    return rules


def _burn(
    name: str, windows: tuple[str, str], factor: float, budget_ms: float, slo: float, **kw: str
) -> Alert:
    long, short = windows
    error_budget = _fmt(1 - slo)
    terms = tuple(
        Term(f"{sli_error_record(w)} / {error_budget}", f"> {_fmt(factor)}") for w in (long, short)
    )
    return Alert(
        name=name,
        terms=terms,
        summary=f"Checkpoint latency error budget burning faster than {_fmt(factor)}x",
        description=(
            f"Over the last {long} (and {short}) checkpoint operations of {{{{ $labels.job }}}}"
            f" missed the {_fmt(budget_ms)} ms budget {{{{ $value | humanize }}}} times faster"
            f" than the {_fmt(slo * 100)}% SLO allows (threshold {_fmt(factor)}x)."
        ),
        **kw,
    )


def alerts(budget_ms: float, slo: float) -> list[Alert]:
    """Every alert, in the order the runbook documents them."""
    return [
        _burn(
            "CheckpointLatencyBudgetBurnFast",
            ("1h", "5m"),
            14.4,
            budget_ms,
            slo,
            severity="critical",
            for_="2m",
        ),
        _burn(
            "CheckpointLatencyBudgetBurnSlow",
            ("6h", "30m"),
            6,
            budget_ms,
            slo,
            severity="critical",
            for_="15m",
        ),
        _burn(
            "CheckpointLatencyBudgetBurnTicket",
            ("3d", "6h"),
            1,
            budget_ms,
            slo,
            severity="warning",
            for_="1h",
        ),
        Alert(
            name="CheckpointErrorsHigh",
            terms=(Term(FAILED_RECORD, "> 0.05"),),
            severity="warning",
            for_="10m",
            summary="Checkpoint operations are failing",
            description=(
                "{{ $value | humanizePercentage }} of the checkpoint operations of"
                " {{ $labels.job }} ended in error or timeout over 5m (threshold 5%)."
            ),
        ),
        Alert(
            name="CheckpointCircuitOpen",
            # The gauge is 1 while calls are skipped: one cooldown at a time, with a failed probe
            # in between. max_over_time bridges those instants so a long outage stays firing.
            terms=(Term(f"max without (pid) (max_over_time({names.CIRCUIT_OPEN}[1m]))", "> 0"),),
            severity="critical",
            for_="5m",
            summary="Checkpoint circuit breaker open: checkpoints are being skipped",
            description=(
                "The circuit breaker of {{ $labels.instance }} ({{ $labels.job }}) has been open"
                " for 5m (value {{ $value | humanize }}): agents run without checkpoints."
            ),
        ),
        Alert(
            name="CheckpointTTLExpiriesHigh",
            terms=(Term(TTL_EXPIRED_RECORD, "> 0.1"),),
            severity="warning",
            for_="5m",
            summary="Many checkpointed runs expire unfinished",
            description=(
                "Runs of {{ $labels.job }} that expired by TTL were"
                " {{ $value | humanizePercentage }} of the runs started over 1h (threshold 10%):"
                " runs are abandoned and their work wasted."
            ),
        ),
        Alert(
            name="CheckpointResumeRateHigh",
            terms=(Term(RESUMED_RECORD, "> 0.25"),),
            severity="warning",
            for_="5m",
            summary="Many agent runs are resuming from a checkpoint",
            description=(
                "{{ $value | humanizePercentage }} of the runs of {{ $labels.job }} started over"
                " 30m were resumes (threshold 25%): agents are failing often."
            ),
        ),
        Alert(
            name="CheckpointSidecarDown",
            terms=(
                Term(f'{{__name__=~"{SIDECAR_METRIC_PREFIX}.+"}}', absent=True),
                Term(f"(up and on (job, instance) last_over_time({names.REDIS_UP}[1h]))", "== 0"),
            ),
            joiner="or",
            severity="critical",
            for_="5m",
            summary="The checkpoint sidecar is down or not scraped",
            description=(
                "{{ if $labels.instance }}Target {{ $labels.instance }} ({{ $labels.job }}),"
                " which exports the sidecar's metrics, is down (up = {{ $value | humanize }})."
                f"{{{{ else }}}}No {SIDECAR_METRIC_PREFIX}* series has been scraped for 5m."
                "{{ end }} Expiries are not counted and Redis health is not watched."
            ),
        ),
        Alert(
            name="CheckpointExpiryWatcherDown",
            terms=(Term(f"max without (pid) ({names.WATCHER_UP})", "== 0"),),
            severity="warning",
            for_="10m",
            summary="The sidecar's expiry watcher is not subscribed",
            description=(
                "The expiry watcher of {{ $labels.instance }} has been down for 10m"
                " (value {{ $value | humanize }}): TTL and lease expiries are not counted."
            ),
        ),
    ]


def rules_document(
    budget_ms: float = DEFAULT_BUDGET_MS, slo: float = DEFAULT_SLO, runbook_url: str = RUNBOOK_URL
) -> dict[str, Any]:
    """The rule file as a mapping (what ``generate_rules`` writes as YAML)."""
    if not 0 < slo < 1:
        raise ValueError("slo must be between 0 and 1 (exclusive)")
    budget_seconds = budget_ms / 1000.0
    return {
        "groups": [
            {
                "name": "checkpoint-slo-recordings",
                "rules": [
                    {"record": record, "expr": expr}
                    for record, expr in recording_rules(budget_seconds)
                ],
            },
            {
                "name": "checkpoint-alerts",
                "rules": [a.rule(runbook_url) for a in alerts(budget_ms, slo)],
            },
        ]
    }


_HEADER = """\
# Generated by `python -m sidecar.ops` from sidecar/ops/rules.py: do not edit by hand.
# Latency budget {budget_ms} ms, SLO {slo_pct}% of checkpoint operations within the budget.
# Regenerate for another budget: python -m sidecar.ops --out-dir . --budget-ms N --slo 0.99
"""


def generate_rules(
    out_path: pathlib.Path,
    *,
    budget_ms: float = DEFAULT_BUDGET_MS,
    slo: float = DEFAULT_SLO,
    runbook_url: str = RUNBOOK_URL,
) -> pathlib.Path:
    """Write the rule file for ``budget_ms`` / ``slo`` to ``out_path`` and return the path."""
    import yaml

    document = rules_document(budget_ms, slo, runbook_url)
    header = _HEADER.format(budget_ms=_fmt(budget_ms), slo_pct=_fmt(slo * 100))
    body = yaml.safe_dump(document, sort_keys=False, width=1000, allow_unicode=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(header + body, encoding="utf-8")
    return out_path


__all__ = ["Alert", "Term", "alerts", "generate_rules", "recording_rules", "rules_document"]
