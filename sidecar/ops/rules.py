"""Prometheus recording and alerting rules for checkpointing, as data.

Each alert is a list of :class:`Term` s: a *probe* (the PromQL whose value the alert looks at)
and the comparison that makes it fire. The YAML is assembled from them
(:func:`rules_document` returns the groups: the rule file and the Prometheus Operator's
``PrometheusRule`` are both written from it), and the end-to-end test evaluates every probe
against a real Prometheus, so an alert naming a metric that does not exist is caught before an
operator finds out that it can never fire.

What the alerts promise:

* severity by impact: ``critical`` pages when checkpoints are lost now (Redis unavailable) or
  the latency SLO burns fast; losing observability only (the sidecar) is a ``warning``;
* a total outage pages whatever the agents' traffic (:func:`_redis_unavailable`);
* ratios never divide by zero, and ratio alerts wait for a minimum of traffic (the
  ``*_MIN_*`` guards): one resume out of four runs is not an incident;
* descriptions name the namespace and the pod when Prometheus has them; every ``runbook_url``
  is absolute (:data:`RUNBOOK_URL`, overridable).

Thresholds are module constants, read by the dashboards that draw them. Recording rules follow
Sloth's naming (``<prefix>:sli_error:ratio_rate<window>``).
"""

from __future__ import annotations

import pathlib
import urllib.parse
from dataclasses import dataclass
from typing import Any

from sidecar import names
from sidecar.config import CheckpointConfig
from sidecar.ops.promql import Queries, without

DEFAULT_BUDGET_MS = CheckpointConfig.model_fields["budget_ms"].default
DEFAULT_SLO = 0.99
# Where the runbooks live: every ``runbook_url`` is absolute, because Alertmanager, Slack and
# PagerDuty show a relative path as dead text. The default is docs/runbooks.md of the project's
# repository; operators who host their own copy pass ``--runbook-url https://.../runbooks.md``.
# A relative value (``docs/runbooks.md``) is read against RUNBOOK_BASE_URL.
RUNBOOK_BASE_URL = "https://github.com/checkpoint-sidecar/checkpoint-sidecar/blob/main/"
RUNBOOK_URL = RUNBOOK_BASE_URL + "docs/runbooks.md"
SLI_WINDOWS = ("5m", "30m", "1h", "6h", "3d")
SLO_WINDOW = "30d"
SIDECAR_METRIC_PREFIX = names.REDIS_UP.split("_", 1)[0] + "_"  # "sidecar_"


def sli_error_record(window: str) -> str:
    return f"checkpoint:sli_error:ratio_rate{window}"


# The 30-day figures are read from two cheap 5-minute records (one sample per job and
# evaluation), not from 30 days of raw histogram buckets at every dashboard refresh.
SLI_GOOD_RECORD = "checkpoint:sli_good:rate5m"
SLI_EVENTS_RECORD = "checkpoint:sli_events:rate5m"
SLO_RECORD = sli_error_record(SLO_WINDOW)
FAILED_RECORD = "checkpoint:operations_failed:ratio_rate5m"
UNAVAILABLE_RECORD = "checkpoint:operations_unavailable:ratio_rate5m"
RESUMED_RECORD = "checkpoint:runs_resumed:ratio_rate30m"
TTL_EXPIRED_RECORD = "checkpoint:runs_ttl_expired:ratio_rate1h"

# Thresholds and traffic guards, shared with the dashboards (which draw the thresholds).
FAILED_THRESHOLD = 0.05
FAILED_MIN_OPERATIONS = 100  # per 5 minutes: 2 errors out of 10 calls are not an incident
UNAVAILABLE_THRESHOLD = 0.9
RESUMED_THRESHOLD = 0.25
RESUMED_MIN_RUNS = 20  # per 30 minutes: one resume out of four runs is not an incident
TTL_EXPIRED_THRESHOLD = 0.1
TTL_EXPIRED_MIN_RUNS = 20  # per hour: idle agents whose old runs expire are not a ratio
# (name, long window, short window, burn factor, severity, for)
BURN_ALERTS = (
    ("CheckpointLatencyBudgetBurnFast", "1h", "5m", 14.4, "critical", "2m"),
    ("CheckpointLatencyBudgetBurnSlow", "6h", "30m", 6.0, "critical", "15m"),
    ("CheckpointLatencyBudgetBurnTicket", "3d", "6h", 1.0, "warning", "1h"),
)

# Where an alert fires, for its description. Job-level alerts (sums over the pods of a job)
# name the namespace when there is one; per-target alerts name the pod, or the instance when
# Prometheus scrapes without Kubernetes labels.
_JOB = "{{ $labels.job }}{{ with $labels.namespace }} in namespace {{ . }}{{ end }}"
_TARGET = (
    "{{ with $labels.pod }}pod {{ . }}{{ else }}{{ $labels.instance }}{{ end }}"
    "{{ with $labels.namespace }} in namespace {{ . }}{{ end }} (job {{ $labels.job }})"
)


def absolute_url(url: str) -> str:
    """``url`` if absolute, else read against :data:`RUNBOOK_BASE_URL`."""
    if urllib.parse.urlsplit(url).scheme in ("http", "https"):
        return url
    return urllib.parse.urljoin(RUNBOOK_BASE_URL, url)


def runbook_link(name: str, runbook_url: str = RUNBOOK_URL) -> str:
    """The absolute link to the runbook section of alert ``name``."""
    return f"{absolute_url(runbook_url)}#{name.lower()}"


@dataclass(frozen=True)
class Term:
    """One condition of an alert: ``probe`` returns the value, ``comparison`` filters it.

    ``absent`` terms fire when ``probe`` returns nothing (``absent(probe)``). ``unless`` is an
    expression that silences the term where it returns a series (a cross-check)."""

    probe: str
    comparison: str = ""
    absent: bool = False
    unless: str = ""

    def render(self) -> str:
        if self.absent:
            return f"absent({self.probe})"
        rendered = f"{self.probe} {self.comparison}".strip()
        return f"{rendered} unless {self.unless}" if self.unless else rendered


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
                "runbook_url": runbook_link(self.name, runbook_url),
            },
        }


def _fmt(value: float) -> str:
    """A float as PromQL reads it, without binary noise (``0.01`` not ``0.010000000000000009``)."""
    return format(round(value, 10), "g")


def _pct(value: float) -> str:
    return _fmt(value * 100) + "%"


def recording_rules(budget_seconds: float) -> list[tuple[str, str]]:
    """(record name, expression) pairs, in evaluation order (later rules read earlier ones)."""
    q = Queries(budget_seconds)
    rules = [(sli_error_record(w), q.sli_error_ratio(w)) for w in SLI_WINDOWS]
    rules += [
        (SLI_GOOD_RECORD, q.good_rate("5m")),
        (SLI_EVENTS_RECORD, q.events_rate("5m")),
        (
            SLO_RECORD,
            f"1 - sum_over_time({SLI_GOOD_RECORD}[{SLO_WINDOW}])"
            f" / (sum_over_time({SLI_EVENTS_RECORD}[{SLO_WINDOW}]) > 0)",
        ),
        (FAILED_RECORD, q.failed_ratio("5m")),
        (UNAVAILABLE_RECORD, q.unavailable_ratio("5m")),
        (RESUMED_RECORD, q.resumed_ratio("30m")),
        (TTL_EXPIRED_RECORD, q.ttl_expiry_ratio("1h")),
    ]
    return rules


def _burn(
    name: str, long: str, short: str, factor: float, budget_ms: float, slo: float, **kw: str
) -> Alert:
    error_budget = _fmt(1 - slo)
    terms = tuple(
        Term(f"{sli_error_record(w)} / {error_budget}", f"> {_fmt(factor)}") for w in (long, short)
    )
    return Alert(
        name=name,
        terms=terms,
        summary=f"Checkpoint latency error budget burning faster than {_fmt(factor)}x",
        description=(
            f"Over the last {long} (and {short}) checkpoint operations of {_JOB}"
            f" missed the {_fmt(budget_ms)} ms budget {{{{ $value | humanize }}}} times faster"
            f" than the {_fmt(slo * 100)}% SLO allows (threshold {_fmt(factor)}x)."
        ),
        **kw,
    )


def _redis_unavailable(q: Queries) -> Alert:
    """Issue 9, item 14: a total outage pages whatever the agents' traffic.

    The circuit gauge is 1 only during each cooldown (5 s), so an agent that calls every 30 s
    shows it at almost no scrape. What holds through an outage: no call gets anything done
    (every outcome error, timeout or skipped), and the sidecars, which keep serving while Redis
    is down, report ``sidecar_redis_up 0``. The sidecar's view pages only if no agent call
    succeeded meanwhile: a sidecar with a wrong ACL user is not a Redis outage.
    """
    return Alert(
        name="CheckpointRedisUnavailable",
        terms=(
            Term(UNAVAILABLE_RECORD, f"> {_fmt(UNAVAILABLE_THRESHOLD)}"),
            Term(
                f"max without (instance, pod) ({names.REDIS_UP})",
                "== 0",
                unless=f"on (job, namespace) ({q.ok_rate('2m')} > 0)",
            ),
        ),
        joiner="or",
        severity="critical",
        for_="3m",
        summary="Redis is unavailable to checkpoints: agents run without them",
        description=(
            f"Checkpoint calls of {_JOB} get nothing done: {{{{ if lt $value 0.5 }}}}no sidecar"
            " of the job reaches Redis (sidecar_redis_up 0) and no agent call succeeded for 2m"
            "{{ else }}{{ $value | humanizePercentage }} of them failed or were skipped over 5m"
            f" (threshold {_pct(UNAVAILABLE_THRESHOLD)}){{{{ end }}}}. A crash now loses all"
            " work done since the outage began."
        ),
    )


def alerts(budget_ms: float, slo: float) -> list[Alert]:
    """Every alert, in the order the runbook documents them."""
    q = Queries(budget_ms / 1000.0)
    return [
        *(
            _burn(name, long, short, factor, budget_ms, slo, severity=severity, for_=for_)
            for name, long, short, factor, severity, for_ in BURN_ALERTS
        ),
        _redis_unavailable(q),
        Alert(
            name="CheckpointErrorsHigh",
            terms=(
                Term(FAILED_RECORD, f"> {_fmt(FAILED_THRESHOLD)}"),
                Term(q.events_increase("5m"), f">= {FAILED_MIN_OPERATIONS}"),
            ),
            severity="warning",
            for_="10m",
            summary="Checkpoint operations are failing",
            description=(
                f"{{{{ $value | humanizePercentage }}}} of the checkpoint operations of {_JOB}"
                f" ended in error or timeout over 5m (threshold {_pct(FAILED_THRESHOLD)}, with"
                f" at least {FAILED_MIN_OPERATIONS} operations)."
            ),
        ),
        Alert(
            name="CheckpointCircuitOpen",
            # The gauge is 1 while calls are skipped: one cooldown at a time, with a failed probe
            # in between. max_over_time bridges those instants so a long outage stays firing.
            terms=(Term(f"max without (pid) (max_over_time({names.CIRCUIT_OPEN}[1m]))", "> 0"),),
            severity="warning",
            for_="5m",
            summary="Checkpoint circuit breaker open: checkpoints are being skipped",
            description=(
                f"The circuit breaker of {_TARGET} has been open for 5m"
                " (value {{ $value | humanize }}): its agents run without checkpoints."
            ),
        ),
        Alert(
            name="CheckpointTTLExpiriesHigh",
            terms=(
                Term(TTL_EXPIRED_RECORD, f"> {_fmt(TTL_EXPIRED_THRESHOLD)}"),
                Term(q.runs_started_increase("1h"), f">= {TTL_EXPIRED_MIN_RUNS}"),
            ),
            severity="warning",
            for_="5m",
            summary="Many checkpointed runs expire unfinished",
            description=(
                f"Runs of {_JOB} that expired by TTL were {{{{ $value | humanizePercentage }}}}"
                f" of the runs started over 1h (threshold {_pct(TTL_EXPIRED_THRESHOLD)}, with at"
                f" least {TTL_EXPIRED_MIN_RUNS} runs started): runs are abandoned and their"
                " work wasted."
            ),
        ),
        Alert(
            name="CheckpointResumeRateHigh",
            terms=(
                Term(RESUMED_RECORD, f"> {_fmt(RESUMED_THRESHOLD)}"),
                Term(q.runs_started_increase("30m"), f">= {RESUMED_MIN_RUNS}"),
            ),
            severity="warning",
            for_="5m",
            summary="Many agent runs are resuming from a checkpoint",
            description=(
                f"{{{{ $value | humanizePercentage }}}} of the runs of {_JOB} started over 30m"
                f" were resumes (threshold {_pct(RESUMED_THRESHOLD)}, with at least"
                f" {RESUMED_MIN_RUNS} runs): agents are failing often."
            ),
        ),
        Alert(
            name="CheckpointSidecarDown",
            terms=(
                Term(f'{{__name__=~"{SIDECAR_METRIC_PREFIX}.+"}}', absent=True),
                Term(f"(up and on (job, instance) last_over_time({names.REDIS_UP}[1h]))", "== 0"),
            ),
            joiner="or",
            # Losing the sidecar loses observability only: agents keep checkpointing.
            severity="warning",
            for_="5m",
            summary="The checkpoint sidecar is down or not scraped",
            description=(
                f"{{{{ if $labels.instance }}}}The sidecar target {_TARGET} is down"
                " (up = {{ $value | humanize }})."
                f"{{{{ else }}}}No {SIDECAR_METRIC_PREFIX}* series has been scraped for 5m."
                "{{ end }} Expiries are not counted, Redis health is not watched, and in"
                " multiprocess mode the agents' own metrics are not exported either."
            ),
        ),
        Alert(
            name="CheckpointExpiryWatcherDown",
            # 1 while the watcher is healthy: counting, or standing by with Redis answering (a
            # standby sidecar of the fleet is up); 0 means it could not take over counting.
            terms=(Term(f"max without (pid) ({names.WATCHER_UP})", "== 0"),),
            severity="warning",
            for_="10m",
            summary="A sidecar's expiry watcher is down: it can neither count nor take over",
            description=(
                f"The expiry watcher of {_TARGET} has been down for 10m"
                " (value {{ $value | humanize }}): it cannot count TTL and lease expiries."
            ),
        ),
        Alert(
            name="CheckpointExpiriesNotCounted",
            # Several sidecars run per Redis and exactly K >= 1 of them count (elected); counts
            # are deduplicated in Redis, so the sum over instances is the number counting.
            terms=(Term(f"{without()} ({names.WATCHER_COUNTING})", "== 0"),),
            severity="warning",
            for_="10m",
            summary="No sidecar counts TTL and lease expiries",
            description=(
                f"None of the sidecars of {_JOB} has been an elected counting watcher for 10m"
                " (counting watchers: {{ $value | humanize }}): TTL and lease expiries are"
                " missed and CheckpointTTLExpiriesHigh cannot fire."
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


__all__ = [
    "Alert",
    "Term",
    "absolute_url",
    "alerts",
    "generate_rules",
    "recording_rules",
    "rules_document",
    "runbook_link",
]
