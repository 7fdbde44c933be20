"""Operations artefacts generated from the library's own names and defaults.

Dashboards (grafanalib, normalised to Grafana's current dashboard schema), Prometheus rules
(recording rules + multi-window burn-rate alerts) and a matplotlib picture of the overview.
The budget and the SLO are arguments; metric names come from :mod:`sidecar.names`. grafanalib,
PyYAML and matplotlib are imported only when a generator runs: the rules need PyYAML (extras
``server`` and ``dashboards``), the dashboards grafanalib (``dashboards``). The rules also come
as a Prometheus Operator ``PrometheusRule`` (:mod:`sidecar.ops.k8s`).

Regenerate everything committed in the repository::

    python -m sidecar.ops --out-dir . [--budget-ms 100] [--slo 0.99]
"""

from __future__ import annotations

import pathlib

from sidecar.ops.rules import DEFAULT_BUDGET_MS, DEFAULT_SLO, RUNBOOK_URL
from sidecar.ops.rules import generate_rules as _generate_rules


def generate_dashboards(
    out_dir: pathlib.Path | str,
    *,
    budget_ms: float = DEFAULT_BUDGET_MS,
    slo: float = DEFAULT_SLO,
    runbook_url: str = RUNBOOK_URL,
) -> list[pathlib.Path]:
    """Write every dashboard as ``<out_dir>/<name>.json``; return the paths written.

    ``runbook_url``: where alerting panels link to (the same URL as the rules').
    """
    from sidecar.ops.dashboards import generate_dashboards as _generate

    return _generate(pathlib.Path(out_dir), budget_ms=budget_ms, slo=slo, runbook_url=runbook_url)


def generate_rules(
    out_path: pathlib.Path | str,
    *,
    budget_ms: float = DEFAULT_BUDGET_MS,
    slo: float = DEFAULT_SLO,
    runbook_url: str = RUNBOOK_URL,
) -> pathlib.Path:
    """Write the Prometheus rule file (recording rules and alerts) to ``out_path``.

    ``runbook_url`` is where operators read docs/runbooks.md (each alert links to its heading);
    absolute, or relative to the project's repository (``sidecar.ops.rules.RUNBOOK_BASE_URL``).
    """
    return _generate_rules(
        pathlib.Path(out_path), budget_ms=budget_ms, slo=slo, runbook_url=runbook_url
    )


def render_overview_png(
    prometheus_url: str, out_path: pathlib.Path | str, *, window_s: int = 900
) -> pathlib.Path:
    """Draw the overview dashboard's main panels from a live Prometheus into a PNG."""
    from sidecar.ops.render import render_overview_png as _render

    return _render(prometheus_url, pathlib.Path(out_path), window_s=window_s)


__all__ = ["generate_dashboards", "generate_rules", "render_overview_png"]
