"""Build, normalise and write the dashboards.

The panels are defined with grafanalib in :mod:`sidecar.ops.overview` and
:mod:`sidecar.ops.health` (inside the package, so an installed ``checkpoint-sidecar`` can
regenerate them); ``dashboards/*.dashboard.py`` expose the same objects under grafanalib's
``generate-dashboard`` convention. The JSON written here is normalised
(:mod:`sidecar.ops.normalize`) and key-sorted, so a regenerated file differs from the committed
one only when a source changed.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any

from grafanalib._gen import DashboardEncoder

from sidecar.ops import health, overview
from sidecar.ops.normalize import normalize_dashboard
from sidecar.ops.rules import DEFAULT_BUDGET_MS, DEFAULT_SLO, RUNBOOK_URL


def builders(
    budget_ms: float, slo: float, runbook_url: str = RUNBOOK_URL
) -> dict[str, Callable[[], Any]]:
    """File stem -> a function building that grafanalib dashboard."""
    budget_seconds = budget_ms / 1000.0
    return {
        overview.FILENAME: lambda: overview.build(budget_seconds, slo, runbook_url),
        health.FILENAME: lambda: health.build(runbook_url),
    }


def to_grafana_json(dashboard: Any) -> dict[str, Any]:
    """A grafanalib dashboard as normalised Grafana 10 JSON (a plain dict)."""
    raw = json.loads(json.dumps(dashboard.to_json_data(), cls=DashboardEncoder))
    return normalize_dashboard(raw)


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def dashboards_json(
    budget_ms: float = DEFAULT_BUDGET_MS, slo: float = DEFAULT_SLO, runbook_url: str = RUNBOOK_URL
) -> dict[str, dict[str, Any]]:
    """File stem -> normalised dashboard JSON."""
    if budget_ms <= 0 or not 0 < slo < 1:
        raise ValueError("budget_ms must be > 0 and slo between 0 and 1 (exclusive)")
    built = builders(budget_ms, slo, runbook_url)
    return {stem: to_grafana_json(build()) for stem, build in built.items()}


def generate_dashboards(
    out_dir: pathlib.Path,
    *,
    budget_ms: float = DEFAULT_BUDGET_MS,
    slo: float = DEFAULT_SLO,
    runbook_url: str = RUNBOOK_URL,
) -> list[pathlib.Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, data in dashboards_json(budget_ms, slo, runbook_url).items():
        path = out_dir / f"{stem}.json"
        path.write_text(render(data), encoding="utf-8")
        written.append(path)
    return written
