"""Small grafanalib constructors with this project's conventions baked in.

Every panel reads the ``${datasource}`` variable, has a description and a unit, and every
query is filtered by the ``$job`` / ``$namespace`` / ``$pod`` / ``$instance`` variables
(:func:`sel`); recording rules, which sum the pods of a job, by ``$job`` / ``$namespace``
(:func:`record`). Panels are laid out in rows by :func:`layout`, and a panel that shows what an
alert judges links to that alert's runbook (:func:`runbook_links`). Keeping these in one place
is what lets the dashboards stay short and the normaliser stay generic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attr
from grafanalib import core as g

from sidecar.ops.normalize import DATASOURCE, DATASOURCE_VARIABLE
from sidecar.ops.rules import runbook_link

# Job-level matchers (what a recording rule keeps) and the per-target ones.
RECORD_MATCHERS = 'job=~"$job", namespace=~"$namespace"'
TARGET_MATCHERS = RECORD_MATCHERS + ', pod=~"$pod", instance=~"$instance"'
RATE = "$__rate_interval"
TAG = "checkpoint-sidecar"  # both dashboards carry it; their links list each other by it
_REF_IDS = "ABCDEFGHIJ"
_WIDTH = 24  # Grafana's grid


def sel(metric: str, *matchers: str) -> str:
    """``metric{job=~"$job", namespace=~"$namespace", pod=~"$pod", instance=~"$instance", ...}``."""
    return metric + "{" + ", ".join((TARGET_MATCHERS, *matchers)) + "}"


def record(name: str) -> str:
    """A recording rule's series for the selected jobs and namespaces (it has no pod label)."""
    return name + "{" + RECORD_MATCHERS + "}"


def size(w: int, h: int) -> Any:
    """A panel's width and height; :func:`layout` decides where it goes."""
    return g.GridPos(h=h, w=w, x=0, y=0)


def layout(rows: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
    """Rows of panels, top to bottom, each row's panels left to right (wrapping at 24)."""
    out: list[Any] = []
    y = 0
    for title, panels in rows:
        out.append(g.RowPanel(title=title, gridPos=g.GridPos(h=1, w=_WIDTH, x=0, y=y)))
        y += 1
        x, line = 0, 0
        for panel in panels:
            w, h = panel.gridPos.w, panel.gridPos.h
            if x + w > _WIDTH:
                x, y, line = 0, y + line, 0
            out.append(attr.evolve(panel, gridPos=g.GridPos(h=h, w=w, x=x, y=y)))
            x, line = x + w, max(line, h)
        y += line
    return out


def runbook_links(runbook_url: str, *alerts: str) -> list[dict[str, Any]]:
    """Panel links to the runbook section of each alert the panel shows the evidence of."""
    return [
        _link(f"Runbook: {alert}", runbook_link(alert, runbook_url), "doc", target_blank=True)
        for alert in alerts
    ]


def dashboard_link(uid: str, title: str) -> dict[str, Any]:
    """A panel link to another dashboard, keeping the time range and the variables."""
    url = f"/d/{uid}/{uid}?${{__url_time_range}}&${{__all_variables}}"
    return _link(title, url, "dashboard", target_blank=False)


def _link(title: str, url: str, icon: str, *, target_blank: bool) -> dict[str, Any]:
    # Grafana reads title/url/targetBlank of a panel link; its schema models panel links as
    # dashboard links, whose other fields are required: give them their neutral values.
    return {
        "title": title,
        "type": "link",
        "url": url,
        "icon": icon,
        "tooltip": title,
        "tags": [],
        "asDropdown": False,
        "targetBlank": target_blank,
        "includeVars": False,
        "keepTime": False,
    }


def targets(*queries: tuple[str, str]) -> list[Any]:
    """Range-query targets from ``(expr, legendFormat)`` pairs, refIds A, B, C ..."""
    return [
        g.Target(expr=expr, legendFormat=legend, refId=ref)
        for ref, (expr, legend) in zip(_REF_IDS, queries, strict=False)
    ]


def timeseries(
    title: str,
    description: str,
    queries: list[Any],
    unit: str,
    pos: Any,
    *,
    overrides: list[dict[str, Any]] | None = None,
    stacking: str | None = None,
    draw: str = "line",
    thresholds: Sequence[tuple[float, str]] | None = None,
    minimum: int | None = None,
    maximum: int | None = None,
    links: list[dict[str, Any]] | None = None,
) -> Any:
    panel = g.TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=queries,
        unit=unit,
        gridPos=pos,
        overrides=overrides or [],
        drawStyle=draw,
        fillOpacity=20 if stacking or draw == "bars" else 0,
        stacking={"mode": stacking, "group": "A"} if stacking else {"mode": "none"},
        legendDisplayMode="table",
        legendPlacement="right",
        legendCalcs=["lastNotNull", "max"],
        tooltipMode="multi",
        tooltipSort="desc",
        valueMin=minimum,
        valueMax=maximum,
        thresholdsStyleMode="line+area" if thresholds else "off",
        links=links or [],
    )
    if thresholds:
        panel.extraJson = {"fieldConfig": {"defaults": {"thresholds": _steps(thresholds)}}}
    return panel


def _steps(steps: Sequence[tuple[float, str]]) -> dict[str, Any]:
    """Threshold steps; the first step is the base (Grafana colours lower values with it)."""
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}


def stat(
    title: str,
    description: str,
    queries: list[Any],
    unit: str,
    pos: Any,
    *,
    thresholds: Sequence[tuple[float, str]],
    mappings: list[dict[str, Any]] | None = None,
    decimals: int | None = None,
    links: list[dict[str, Any]] | None = None,
) -> Any:
    return g.Stat(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=queries,
        format=unit,
        gridPos=pos,
        reduceCalc="lastNotNull",
        colorMode="background",
        graphMode="area",
        thresholds=_steps(thresholds)["steps"],
        mappings=mappings or [],
        decimals=decimals,
        noValue="no data",
        links=links or [],
    )


def state_timeline(
    title: str,
    description: str,
    queries: list[Any],
    pos: Any,
    *,
    mappings: list[dict[str, Any]],
    thresholds: Sequence[tuple[float, str]],
    links: list[dict[str, Any]] | None = None,
) -> Any:
    panel = g.StateTimeline(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=queries,
        gridPos=pos,
        mappings=mappings,
        showValue="never",
        links=links or [],
    )
    panel.extraJson = {"fieldConfig": {"defaults": {"thresholds": _steps(thresholds)}}}
    return panel


def heatmap(title: str, description: str, queries: list[Any], unit: str, pos: Any) -> Any:
    panel = g.Heatmap(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=queries,
        gridPos=pos,
        dataFormat="tsbuckets",
    )
    panel.extraJson = {"fieldConfig": {"defaults": {"unit": unit}}}
    return panel


def value_map(values: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """A Grafana value mapping: raw value -> (text, colour)."""
    return [
        {
            "type": "value",
            "options": {
                raw: {"text": text, "color": color, "index": i}
                for i, (raw, (text, color)) in enumerate(values.items())
            },
        }
    ]


def _query_variable(name: str, label: str, query: str) -> Any:
    return g.Template(
        name=name,
        label=label,
        query=query,
        dataSource=DATASOURCE,
        includeAll=True,
        multi=True,
        allValue=".*",  # also matches a missing label: Prometheus without Kubernetes labels
        refresh=2,
    )


def templating(variable_metric: str) -> Any:
    """``datasource``, then ``job`` → ``namespace`` → ``pod`` → ``instance``, each listing the
    values of ``variable_metric`` under the ones before it."""
    chain = [("job", "Job"), ("namespace", "Namespace"), ("pod", "Pod"), ("instance", "Instance")]
    variables = [
        g.Template(
            name=DATASOURCE_VARIABLE,
            label="Data source",
            type="datasource",
            query="prometheus",
            hide=0,
        )
    ]
    for i, (name, label) in enumerate(chain):
        above = ", ".join(f'{n}=~"${n}"' for n, _ in chain[:i])
        selector = f"{variable_metric}{{{above}}}" if above else variable_metric
        variables.append(_query_variable(name, label, f"label_values({selector}, {name})"))
    return g.Templating(list=variables)


def dashboard(
    uid: str, title: str, description: str, panels: list[Any], variable_metric: str
) -> Any:
    """A dashboard tagged :data:`TAG`, linking to every other dashboard with that tag."""
    return g.Dashboard(
        uid=uid,
        title=title,
        description=description,
        tags=[TAG],
        timezone="browser",
        refresh="30s",
        time=g.Time("now-1h", "now"),
        templating=templating(variable_metric),
        panels=panels,
        graphTooltip=1,
        links=[
            {
                "title": "Checkpoint dashboards",
                "type": "dashboards",
                "icon": "dashboard",
                "tooltip": "",
                "tags": [TAG],
                "asDropdown": False,
                "targetBlank": False,
                "includeVars": True,
                "keepTime": True,
            }
        ],
    ).auto_panel_ids()
