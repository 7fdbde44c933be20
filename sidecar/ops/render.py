"""Draw the overview dashboard's main panels from a live Prometheus, with matplotlib.

The queries are taken from the generated overview dashboard itself (by panel title), with the
Grafana variables replaced by "everything", so the picture shows exactly what the dashboard
would show, without a Grafana. Only the standard library talks to Prometheus (``urllib``).
"""

from __future__ import annotations

import json
import math
import pathlib
import re
import time
import urllib.parse
import urllib.request
from typing import Any

from sidecar.ops import overview
from sidecar.ops.dashboards import to_grafana_json
from sidecar.ops.rules import DEFAULT_BUDGET_MS, DEFAULT_SLO

PANELS = (
    "Latency p99 by operation vs budget",
    "Operations/s by operation",
    "Non-ok outcomes by operation",
    "Within budget vs SLO",
    "Sections restored vs produced (LLM calls saved)",
    "Latency heatmap",
)
_VARIABLES = ("job", "namespace", "pod", "instance")
_MAX_SERIES = 8


def grafana_to_promql(expr: str, rate_interval: str) -> str:
    """A dashboard expression with Grafana's variables replaced for a direct query."""
    for variable in _VARIABLES:
        expr = expr.replace(f'"${variable}"', '".*"')
    return expr.replace("$__rate_interval", rate_interval)


def query_range(
    prometheus_url: str, expr: str, start: float, end: float, step: float
) -> list[dict[str, Any]]:
    """``/api/v1/query_range`` result (a list of series), raising on a Prometheus error."""
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    url = f"{prometheus_url.rstrip('/')}/api/v1/query_range?{params}"
    with urllib.request.urlopen(url, timeout=30) as response:
        body = json.loads(response.read())
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _legend(template: str, labels: dict[str, str]) -> str:
    """Grafana's legend: ``{{label}}`` replaced by its value, by nothing when it is absent."""
    out = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)
    return " ".join(out.split())


def _panels_by_title() -> dict[str, dict[str, Any]]:
    board = to_grafana_json(overview.build(DEFAULT_BUDGET_MS / 1000.0, DEFAULT_SLO))
    found: dict[str, dict[str, Any]] = {}
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        title = str(panel["title"])
        for wanted in PANELS:
            if title.startswith(wanted):
                found[wanted] = panel
    return found


def _draw_lines(ax: Any, series: list[tuple[str, list[float], list[float]]]) -> None:
    ranked = sorted(series, key=lambda s: -max((v for v in s[2] if not math.isnan(v)), default=0))
    for label, xs, ys in ranked[:_MAX_SERIES]:
        dashed = label == "budget"
        ax.plot(xs, ys, label=label, linestyle="--" if dashed else "-",
                color="red" if dashed else None, linewidth=1.2)  # fmt: skip
    if ranked:
        ax.legend(fontsize=6, loc="upper left", ncol=2)


def _draw_heatmap(ax: Any, series: list[tuple[str, list[float], list[float]]]) -> None:
    import numpy as np

    rows = sorted(((float(le), ys) for le, _, ys in series if le != "+Inf"), key=lambda r: r[0])
    if not rows:
        return
    cumulative = np.nan_to_num(np.array([ys for _, ys in rows], dtype=float))
    per_bucket = np.diff(cumulative, axis=0, prepend=0)
    xs = series[0][1]
    ax.imshow(per_bucket, aspect="auto", origin="lower", cmap="Oranges",
              extent=(xs[0], xs[-1], 0, len(rows)))  # fmt: skip
    ticks = range(0, len(rows), 2)
    ax.set_yticks([t + 0.5 for t in ticks], [f"{rows[t][0]:g}" for t in ticks], fontsize=6)
    ax.set_ylabel("le (s)", fontsize=7)


def render_overview_png(
    prometheus_url: str, out_path: pathlib.Path, *, window_s: int = 900
) -> pathlib.Path:
    """Query the last ``window_s`` seconds and save the main overview panels as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    end = time.time()
    start = end - window_s
    step = max(1.0, window_s / 300)
    rate_interval = f"{max(4 * int(step), 4)}s"  # what Grafana picks for 1 s scrapes
    panels = _panels_by_title()
    fig, axes = plt.subplots(3, 2, figsize=(14, 10), constrained_layout=True)
    for ax, title in zip(axes.flat, PANELS, strict=True):
        panel = panels[title]
        drawn: list[tuple[str, list[float], list[float]]] = []
        for target in panel["targets"]:
            expr = grafana_to_promql(target["expr"], rate_interval)
            for item in query_range(prometheus_url, expr, start, end, step):
                xs = [float(t) - end for t, _ in item["values"]]
                ys = [float(v) for _, v in item["values"]]
                drawn.append((_legend(target["legendFormat"], item["metric"]), xs, ys))
        if panel["type"] == "heatmap":
            _draw_heatmap(ax, drawn)
        else:
            _draw_lines(ax, drawn)
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        ax.set_title(f"{panel['title']}" + (f"  [{unit}]" if unit else ""), fontsize=9)
        ax.set_xlabel("seconds before now", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    fig.suptitle("Checkpoint overview (rendered from Prometheus)", fontsize=11)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
