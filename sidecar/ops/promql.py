"""PromQL building blocks shared by the alert rules and the dashboards.

One place defines what "within budget", "an operation" and "an error" mean in PromQL, so the
rules that page and the panels that explain the page can never disagree. Metric names and label
values come from :mod:`sidecar.names`; nothing here retypes them.

Aggregation: an agent process and the sidecar may both be scraped (same job, different
instances), so every sum drops the per-target labels (``instance``, ``pod``) and the per-event
labels, and keeps the rest (``job``, ``namespace`` ...). No job name is hard-coded.

Latency SLI (see docs/runbooks.md, "The latency SLO"):

* events = operations that reached Redis: every outcome but ``skipped`` (circuit open, no
  network call) and ``rejected`` (caller mistake, lease conflict), which are not latency events;
  the outage and error alerts cover them. So ``ok``, ``error``, ``timeout``, ``corrupt`` (Redis
  answered, the value did not decode) and any outcome added later are events: selectors exclude
  outcomes rather than list them, so a new outcome cannot silently drop out of the SLI.
* good = events other than ``timeout`` in the bucket ``le="<budget>"``. A timeout is always
  bad: by definition the call gave up at the budget. A fast error is a latency success (the
  caller got its answer in time); errors are paged on by ``CheckpointErrorsHigh``.

No operation is named anywhere: every verb, the manager's and the LangGraph saver's (``lg_*``)
alike, counts in the SLI and shows in the panels.

Ratios never divide by zero: a denominator is kept only where it is above zero (``/ (d > 0)``),
so an idle job has no ratio at all instead of ``NaN`` or ``+Inf``. Where a missing numerator
series means "none happened" (a counter family whose other label values exist), it reads 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar import names

# Labels that identify one scraped process; dropped so agents and the sidecar add up.
TARGET_LABELS = ("instance", "pod")
# Outcome matchers. ``rejected`` is Redis (or the library) answering "no" to this caller: never
# an outage and never a latency event; ``skipped`` made no network call.
LATENCY_EVENTS = f'outcome!~"{names.SKIPPED}|{names.REJECTED}"'
GOOD_IN_BUCKET = f'outcome!~"{names.TIMEOUT}|{names.SKIPPED}|{names.REJECTED}"'
FAILED = f'outcome=~"{names.ERROR}|{names.TIMEOUT}"'
# Calls that did not get a checkpoint done: failed, or skipped by an open circuit.
UNAVAILABLE = f'outcome=~"{names.ERROR}|{names.TIMEOUT}|{names.SKIPPED}"'
ATTEMPTS = f'outcome!="{names.REJECTED}"'


def le_label(budget_seconds: float) -> str:
    """The ``le`` label value prometheus_client writes for the budget bucket edge.

    prometheus_client formats edges with ``repr`` (``floatToGoString``) and the library rounds
    the budget to 9 decimals (:func:`sidecar.names.latency_buckets`); a test checks both agree.
    """
    return repr(round(budget_seconds, 9))


def without(*extra: str) -> str:
    """``sum without (...)`` dropping the target labels plus ``extra``."""
    return "sum without (" + ", ".join((*TARGET_LABELS, *extra)) + ")"


def ratio(numerator: str, denominator: str, *, absent_is_zero: bool = False) -> str:
    """``numerator / denominator`` where the denominator is above zero, never ``NaN``/``+Inf``.

    ``absent_is_zero``: a missing numerator series means "none" (``or denominator * 0``), so a
    healthy job reads 0 rather than nothing. Not for numerators another process exports (TTL
    expiries come from the sidecar: no sidecar is not "no expiries").
    """
    top = f"({numerator} or {denominator} * 0)" if absent_is_zero else f"({numerator})"
    return f"{top} / ({denominator} > 0)"


@dataclass(frozen=True)
class Queries:
    """PromQL for one budget. ``matchers`` is spliced into every selector (dashboards pass
    their variables, :data:`sidecar.ops.panels.TARGET_MATCHERS`; rules pass nothing)."""

    budget_seconds: float
    matchers: str = ""

    def _sel(self, metric: str, *extra: str) -> str:
        parts = [m for m in (self.matchers, *extra) if m]
        return f"{metric}{{{', '.join(parts)}}}" if parts else metric

    # --- latency SLI ------------------------------------------------------------------------
    def good_rate(self, window: str) -> str:
        bucket = self._sel(
            names.OPERATION_DURATION + "_bucket",
            f'le="{le_label(self.budget_seconds)}"',
            GOOD_IN_BUCKET,
        )
        return f"{without('operation', 'outcome', 'le')} (rate({bucket}[{window}]))"

    def events_rate(self, window: str) -> str:
        count = self._sel(names.OPERATION_DURATION + "_count", LATENCY_EVENTS)
        return f"{without('operation', 'outcome')} (rate({count}[{window}]))"

    def sli_good_ratio(self, window: str) -> str:
        """Share of latency events within the budget in ``window``."""
        return ratio(self.good_rate(window), self.events_rate(window))

    def sli_error_ratio(self, window: str) -> str:
        """Share of latency events over the budget (or timed out) in ``window``."""
        return f"1 - {self.sli_good_ratio(window)}"

    # --- outcomes ---------------------------------------------------------------------------
    def outcomes_rate(self, window: str, outcomes: str) -> str:
        """Operations per second whose outcome matches ``outcomes`` (a label matcher)."""
        count = self._sel(names.OPERATION_DURATION + "_count", outcomes)
        return f"{without('operation', 'outcome')} (rate({count}[{window}]))"

    def events_increase(self, window: str) -> str:
        """Operations that reached Redis in ``window`` (the traffic guard of ratio alerts)."""
        count = self._sel(names.OPERATION_DURATION + "_count", LATENCY_EVENTS)
        return f"{without('operation', 'outcome')} (increase({count}[{window}]))"

    def failed_ratio(self, window: str) -> str:
        """error + timeout share of the operations that reached Redis."""
        return ratio(
            self.outcomes_rate(window, FAILED),
            self.events_rate(window),
            absent_is_zero=True,
        )

    def unavailable_ratio(self, window: str) -> str:
        """Share of checkpoint calls that got nothing done: error, timeout or skipped.

        1 means not one call succeeded in ``window``: a total outage, however sparse the
        traffic (one call every 30 s is 10 calls in 5 minutes, all of them failed or skipped).
        """
        return ratio(
            self.outcomes_rate(window, UNAVAILABLE),
            self.outcomes_rate(window, ATTEMPTS),
            absent_is_zero=True,
        )

    def ok_rate(self, window: str) -> str:
        return self.outcomes_rate(window, f'outcome="{names.OK}"')

    # --- runs -------------------------------------------------------------------------------
    def runs_started(self, window: str, mode: str | None = None) -> str:
        extra = (f'mode="{mode}"',) if mode else ()
        sel = self._sel(names.RUNS_STARTED, *extra)
        return f"{without('mode')} (rate({sel}[{window}]))"

    def runs_started_increase(self, window: str) -> str:
        """Runs started in ``window`` (the traffic guard of the run ratios)."""
        return f"{without('mode')} (increase({self._sel(names.RUNS_STARTED)}[{window}]))"

    def resumed_ratio(self, window: str) -> str:
        return ratio(
            self.runs_started(window, "resumed"), self.runs_started(window), absent_is_zero=True
        )

    def ttl_expiries(self, window: str) -> str:
        return f"{without()} (rate({self._sel(names.TTL_EXPIRIES)}[{window}]))"

    def ttl_expiry_ratio(self, window: str) -> str:
        """Runs that expired unfinished per run started; nothing (not ``+Inf``) when none started.

        Idle agents whose old runs expire have no ratio at all: what they mean is an absolute
        count, which the TTL alert's guard and the expiries panel show.
        """
        return ratio(self.ttl_expiries(window), self.runs_started(window))
